"""Universality tables for a permutation group: orbit counts, Molien series and k-closures.

A G-invariant network is built from G-equivariant linear layers between tensors on ``[n]^k``; the
layers from order ``a`` to order ``b`` are spanned by the 0/1 indicator tensors of G's orbits on
``[n]^(a+b)`` (Maron, Fetaya, Segol, Lipman, arXiv 1901.09342). Whether such a network can tell G
apart from a larger group depends on which tuple lengths G's orbits already determine G. This
module counts those orbits, counts invariant polynomials by degree, and computes the k-closure
``G^(k)`` (the largest permutation group with G's orbits on ``[n]^k``) as the automorphism group of
a coloured graph, with BLISS through igraph rather than a search over ``S_n``.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from fractions import Fraction
from functools import lru_cache
from typing import Any

import igraph
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sympy.combinatorics import Permutation, PermutationGroup

from metasym.errors import MetasymError

__all__ = [
    "CycleType",
    "MAX_CLOSURE_TUPLES",
    "MAX_ENUMERATED_ORDER",
    "cycle_type_counts",
    "orbit_count",
    "equivariant_dim",
    "tuple_orbit_labels",
    "molien_series",
    "first_invariant_difference",
    "k_closure",
    "two_closure",
    "is_two_closed",
    "determining_order",
    "universality_report",
    "format_report",
]

logger = logging.getLogger(__name__)

CycleType = tuple[int, ...]
"""Sorted cycle lengths of one permutation, fixed points included (they sum to the degree)."""

MAX_ENUMERATED_ORDER = 2_000_000
"""Largest group order whose elements are enumerated for cycle-type statistics."""

MAX_CLOSURE_TUPLES = 100_000
"""Largest number of tuples ``n^k`` for which a k-closure graph is built."""


def _group_key(group: PermutationGroup) -> tuple[int, tuple[tuple[int, ...], ...]]:
    """A hashable key for caching: the degree and the generators' array forms."""
    if not isinstance(group, PermutationGroup):
        raise MetasymError(
            f"expected a sympy PermutationGroup, got {type(group).__name__}: {group!r}"
        )
    gens = tuple(sorted(tuple(g.array_form) for g in group.generators))
    return group.degree, gens


def _cycle_type(perm: list[int]) -> CycleType:
    """Cycle lengths of a permutation given as an array form, fixed points included."""
    seen = [False] * len(perm)
    lengths = []
    for start in range(len(perm)):
        if seen[start]:
            continue
        length = 0
        point = start
        while not seen[point]:
            seen[point] = True
            point = perm[point]
            length += 1
        lengths.append(length)
    return tuple(sorted(lengths))


@lru_cache(maxsize=64)
def _cycle_type_counts_cached(
    degree: int, gens: tuple[tuple[int, ...], ...]
) -> tuple[tuple[CycleType, int], ...]:
    group = PermutationGroup([Permutation(list(g)) for g in gens]) if gens else None
    if group is None:
        return (((1,) * degree, 1),)
    order = int(group.order())
    if order > MAX_ENUMERATED_ORDER:
        raise MetasymError(
            f"group order {order} is too large to enumerate; cycle-type statistics are computed "
            f"for groups of order at most MAX_ENUMERATED_ORDER={MAX_ENUMERATED_ORDER}"
        )
    counts = Counter(_cycle_type(list(g)) for g in group.generate(af=True))
    return tuple(sorted(counts.items()))


def cycle_type_counts(group: PermutationGroup) -> dict[CycleType, int]:
    """How many elements of the group have each cycle type (the group's cycle index).

    The elements are enumerated once per group (cached by degree and generators).

    Args:
        group: a permutation group on ``n`` points.

    Returns:
        A map from sorted cycle lengths (summing to ``n``) to the number of elements of that type;
        the counts sum to ``|G|``.

    Raises:
        MetasymError: if ``group`` is not a ``PermutationGroup`` or its order exceeds
            ``MAX_ENUMERATED_ORDER``.
    """
    degree, gens = _group_key(group)
    return dict(_cycle_type_counts_cached(degree, gens))


def _check_order(name: str, k: int, minimum: int = 0) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < minimum:
        raise MetasymError(f"{name} must be an integer >= {minimum}, got {k!r}")


def orbit_count(group: PermutationGroup, k: int) -> int:
    """Number of orbits of G on the index tuples ``[n]^k``, by Burnside's lemma.

    ``#orbits = (1/|G|) sum_g fix(g)^k``, where ``fix(g)`` is the number of points ``g`` fixes (a
    k-tuple is fixed iff each entry is). Computed exactly from the cycle-type counts.

    Args:
        group: a permutation group on ``n`` points.
        k: the tuple length, ``k >= 0`` (``k = 0`` gives 1).

    Returns:
        The number of orbits, which is also the dimension of G-invariant tensors of order ``k``.

    Raises:
        MetasymError: if ``k`` is not a non-negative integer.
    """
    _check_order("k", k)
    counts = cycle_type_counts(group)
    total = sum(mult * ctype.count(1) ** k for ctype, mult in counts.items())
    result = Fraction(total, sum(counts.values()))
    if result.denominator != 1:
        raise AssertionError(f"Burnside's lemma gave a non-integer orbit count {result}")
    return int(result)


def equivariant_dim(group: PermutationGroup, k: int, l: int) -> int:  # noqa: E741
    """Dimension of the G-equivariant linear maps from order-``k`` to order-``l`` tensors.

    A linear map ``R^(n^k) -> R^(n^l)`` is G-equivariant iff its coefficient tensor on
    ``[n]^(l+k)`` is G-invariant, so the dimension is ``orbit_count(G, k + l)``
    (arXiv 1901.09342).

    Args:
        group: a permutation group on ``n`` points.
        k: input tensor order, ``k >= 0``.
        l: output tensor order, ``l >= 0``.

    Returns:
        The number of orbit basis tensors.
    """
    _check_order("k", k)
    _check_order("l", l)
    return orbit_count(group, k + l)


@lru_cache(maxsize=64)
def _tuple_orbit_labels_cached(
    degree: int, gens: tuple[tuple[int, ...], ...], k: int
) -> np.ndarray:
    size = degree**k
    if k == 0:
        return np.zeros((), dtype=np.int64)

    # Row t of `tuples` is the k-tuple with flat (C-order) index t.
    tuples = np.indices((degree,) * k).reshape(k, size).T  # (n^k, k)
    place = degree ** np.arange(k - 1, -1, -1)
    sources, targets = [], []
    for gen in gens:
        perm = np.asarray(gen)
        sources.append(np.arange(size))
        targets.append((perm[tuples] * place).sum(axis=1))
    if sources:
        rows = np.concatenate(sources)
        cols = np.concatenate(targets)
    else:
        rows = cols = np.arange(size)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(size, size))
    _, raw = connected_components(graph, directed=True, connection="weak")

    # Renumber orbits in order of their first tuple, so labels do not depend on scipy's choice.
    _, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    labels = rank[inverse].reshape((degree,) * k)
    labels.setflags(write=False)
    return labels


def tuple_orbit_labels(group: PermutationGroup, k: int) -> np.ndarray:
    """Label every index tuple in ``[n]^k`` by its G-orbit.

    Orbits are numbered ``0, 1, ...`` in order of their first tuple in lexicographic order, so the
    all-zero tuple is always in orbit 0.

    Args:
        group: a permutation group on ``n`` points.
        k: the tuple length, ``k >= 0``.

    Returns:
        A read-only integer array; ``labels[i_1, ..., i_k]`` is the orbit of ``(i_1, ..., i_k)``.

    Shape:
        ``(n,) * k``; a 0-d array for ``k = 0``.
    """
    _check_order("k", k)
    degree, gens = _group_key(group)
    if degree**k > 10 * MAX_CLOSURE_TUPLES:
        raise MetasymError(
            f"n^k = {degree}^{k} = {degree**k} tuples is too many to label; keep n^k at most "
            f"{10 * MAX_CLOSURE_TUPLES}"
        )
    return _tuple_orbit_labels_cached(degree, gens, k)


def _series_inverse_one_minus(length: int, max_degree: int) -> list[int]:
    """Coefficients of ``1 / (1 - t^length)`` up to ``t^max_degree``."""
    return [1 if d % length == 0 else 0 for d in range(max_degree + 1)]


def _series_mul(a: list[int], b: list[int], max_degree: int) -> list[int]:
    out = [0] * (max_degree + 1)
    for i, ai in enumerate(a):
        if ai == 0:
            continue
        for j in range(max_degree + 1 - i):
            out[i + j] += ai * b[j]
    return out


def molien_series(group: PermutationGroup, max_degree: int) -> list[int]:
    """Dimensions of the G-invariant polynomials in ``n`` variables, degree by degree.

    For a permutation group the Molien series is the mean over ``g`` of ``1 / det(1 - t g)``, and
    ``det(1 - t g) = prod over cycles c of g of (1 - t^|c|)``, so
    ``M(t) = (1/|G|) sum_g prod_c 1 / (1 - t^|c|)``. The series is expanded exactly with integer
    coefficients, one product per cycle type.

    Args:
        group: a permutation group on ``n`` points.
        max_degree: the last degree returned, ``>= 0``.

    Returns:
        ``max_degree + 1`` integers; entry ``d`` is the dimension of invariant polynomials
        homogeneous of degree ``d`` (entry 0 is 1).
    """
    _check_order("max_degree", max_degree)
    counts = cycle_type_counts(group)
    total = [0] * (max_degree + 1)
    for ctype, mult in counts.items():
        series = [1] + [0] * max_degree
        for length in ctype:
            series = _series_mul(series, _series_inverse_one_minus(length, max_degree), max_degree)
        total = [t + mult * s for t, s in zip(total, series, strict=True)]
    order = sum(counts.values())
    coefficients = [Fraction(t, order) for t in total]
    if any(c.denominator != 1 for c in coefficients):
        raise AssertionError(f"Molien series gave non-integer coefficients {coefficients}")
    return [int(c) for c in coefficients]


def first_invariant_difference(
    group: PermutationGroup, supergroup: PermutationGroup, max_degree: int
) -> int | None:
    """First degree at which G has more invariant polynomials than a supergroup H.

    Args:
        group: a permutation group G on ``n`` points.
        supergroup: a permutation group H on the same points containing G.
        max_degree: the last degree compared.

    Returns:
        The smallest ``d <= max_degree`` where the Molien coefficients differ, or ``None``.

    Raises:
        MetasymError: if the degrees differ or G is not a subgroup of H.
    """
    if group.degree != supergroup.degree:
        raise MetasymError(
            f"groups act on different numbers of points: {group.degree} and {supergroup.degree}"
        )
    if not group.is_subgroup(supergroup):
        raise MetasymError(
            f"supergroup of order {supergroup.order()} does not contain the group of order "
            f"{group.order()}; pass H with G <= H"
        )
    ours = molien_series(group, max_degree)
    theirs = molien_series(supergroup, max_degree)
    for degree, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if a != b:
            return degree
    return None


def _closure_graph(labels: np.ndarray, degree: int, k: int) -> tuple[igraph.Graph, list[int]]:
    """A vertex-coloured graph whose automorphisms restricted to the points form ``G^(k)``.

    Vertices: the ``n`` points (colour 0); one vertex per k-tuple, coloured by its orbit; and for
    each tuple and position ``m`` a connector vertex, coloured by ``m``, joined to the tuple vertex
    and to the point in position ``m``. Connectors keep the positions apart in an undirected graph.
    """
    size = degree**k
    n_orbits = int(labels.max()) + 1
    tuples = np.indices((degree,) * k).reshape(k, size).T  # (n^k, k)
    tuple_vertex = degree + np.arange(size)
    edges = []
    for m in range(k):
        connector = degree + size + m * size + np.arange(size)
        edges.append(np.stack([tuple_vertex, connector], axis=1))
        edges.append(np.stack([connector, tuples[:, m]], axis=1))
    colours = (
        [0] * degree
        + (1 + labels.reshape(-1)).tolist()
        + [1 + n_orbits + m for m in range(k) for _ in range(size)]
    )
    graph = igraph.Graph(n=degree + size * (k + 1), edges=np.concatenate(edges).tolist())
    return graph, colours


def k_closure(group: PermutationGroup, k: int) -> PermutationGroup:
    """The k-closure ``G^(k)``: all permutations preserving every orbit of G on ``[n]^k``.

    ``G <= G^(k+1) <= G^(k)``, and ``G^(n-1) = G``. Computed as the automorphism group of a coloured
    graph on points and k-tuples (BLISS via igraph), so ``S_n`` is never enumerated.

    Args:
        group: a permutation group on ``n`` points.
        k: the tuple length, ``k >= 1``.

    Returns:
        ``G^(k)`` as a ``PermutationGroup`` on the same ``n`` points.

    Raises:
        MetasymError: if ``k < 1`` or ``n^k`` exceeds ``MAX_CLOSURE_TUPLES``.
    """
    _check_order("k", k, minimum=1)
    degree, _ = _group_key(group)
    if degree**k > MAX_CLOSURE_TUPLES:
        raise MetasymError(
            f"the {k}-closure on n={degree} points needs n^k = {degree**k} tuples; the limit is "
            f"MAX_CLOSURE_TUPLES={MAX_CLOSURE_TUPLES}"
        )
    labels = tuple_orbit_labels(group, k)
    graph, colours = _closure_graph(labels, degree, k)
    generators = graph.automorphism_group(color=colours)
    perms = [Permutation(list(g[:degree])) for g in generators]
    perms = [p for p in perms if not p.is_Identity]
    if not perms:
        perms = [Permutation(list(range(degree)))]
    closure = PermutationGroup(perms)
    logger.debug(
        "%d-closure of a group of order %s has order %s", k, group.order(), closure.order()
    )
    return closure


def two_closure(group: PermutationGroup) -> PermutationGroup:
    """The 2-closure: the automorphism group of G's orbital colouring of ordered pairs.

    Args:
        group: a permutation group on ``n`` points.

    Returns:
        ``G^(2)``, the largest permutation group with the same orbits on ``[n]^2`` as G.
    """
    return k_closure(group, 2)


def is_two_closed(group: PermutationGroup) -> bool:
    """Whether G equals its 2-closure (first-order equivariant layers already pin down G)."""
    return bool(two_closure(group).order() == group.order())


def determining_order(group: PermutationGroup, max_k: int = 4) -> int | None:
    """Smallest k such that G is the k-closure of itself, ``G^(k) = G``.

    Equivariant linear maps built from G's orbits on tuples shorter than this order are also
    equivariant under the strictly larger group ``G^(k)``.

    Args:
        group: a permutation group on ``n`` points.
        max_k: the largest k tried.

    Returns:
        The determining order, or ``None`` when ``G^(k) != G`` for every ``k <= max_k``.

    Raises:
        MetasymError: if ``max_k < 1`` or ``n^k`` exceeds ``MAX_CLOSURE_TUPLES`` before the
            order is found.
    """
    _check_order("max_k", max_k, minimum=1)
    order = group.order()
    for k in range(1, max_k + 1):
        if k_closure(group, k).order() == order:
            return k
    return None


def _verdict(report: dict[str, Any]) -> str:
    degree = report["degree"]
    det = report["determining_order"]
    parts = [f"The group of order {report['order']} on {degree} points"]
    if report["two_closed"]:
        parts[0] += (
            " is 2-closed (determined by its orbits on ordered pairs), so first-order invariant "
            "networks (order-1 tensors, layers from orbits on pairs) meet no closure obstruction."
        )
    else:
        parts[0] += (
            f" is not 2-closed: its 2-closure has order {report['two_closure_order']}, and "
            "first-order invariant networks (order-1 tensors, layers from orbits on pairs) are "
            "invariant under that larger group, so they cannot be universal."
        )
    if det is None:
        parts.append(
            f"No k <= {report['max_k_checked']} has G^(k) = G, so layers must use orbits on "
            "longer tuples than were checked."
        )
    elif det >= 3:
        parts.append(
            f"Its determining order is {det} (G^(k) = G first for k = {det}): the layers must use "
            f"orbits on {det}-tuples, and a layer between tensor orders a and b uses orbits on "
            f"(a+b)-tuples, so hidden tensors of order at least {math.ceil(det / 2)} are needed."
        )
    diff = report.get("molien_difference_degree")
    if diff is not None:
        parts.append(
            f"Its invariant polynomials first outnumber those of its 2-closure in degree {diff}."
        )
    parts.append(
        f"Tensor order n(n-1)/2 = {degree * (degree - 1) // 2} suffices for universality of "
        "G-invariant networks for every G <= S_n (arXiv 1901.09342)."
    )
    return " ".join(parts)


def universality_report(
    group: PermutationGroup, max_order: int = 3, molien_degree: int = 8
) -> dict[str, Any]:
    """Everything the universality question needs about a group, as plain Python values.

    Args:
        group: a permutation group on ``n`` points.
        max_order: the largest tuple length used for the determining order (clipped so that
            ``n^k <= MAX_CLOSURE_TUPLES``); orbit counts are reported for ``k = 1..4``.
        molien_degree: the last degree of the Molien series.

    Returns:
        A dict with keys ``degree``, ``order``, ``orbit_counts`` (``{k: count}`` for ``k = 1..4``),
        ``molien`` (coefficients from degree 0), ``two_closure_order``, ``two_closed``,
        ``determining_order`` (``None`` if not found up to ``max_k_checked``), ``max_k_checked``,
        ``molien_difference_degree`` (first degree where G's invariants differ from its
        2-closure's, ``None`` if equal, closed, or the closure is too large to enumerate) and
        ``verdict`` (one paragraph).
    """
    _check_order("max_order", max_order, minimum=1)
    _check_order("molien_degree", molien_degree)
    degree, _ = _group_key(group)
    order = int(group.order())
    closure = two_closure(group)
    closure_order = int(closure.order())

    max_k = max_order
    while max_k > 1 and degree**max_k > MAX_CLOSURE_TUPLES:
        max_k -= 1
    det = determining_order(group, max_k=max_k)

    diff = None
    if closure_order != order and closure_order <= MAX_ENUMERATED_ORDER // 20:
        diff = first_invariant_difference(group, closure, molien_degree)

    report: dict[str, Any] = {
        "degree": degree,
        "order": order,
        "orbit_counts": {k: orbit_count(group, k) for k in range(1, 5)},
        "molien": molien_series(group, molien_degree),
        "two_closure_order": closure_order,
        "two_closed": closure_order == order,
        "determining_order": det,
        "max_k_checked": max_k,
        "molien_difference_degree": diff,
    }
    report["verdict"] = _verdict(report)
    return report


def format_report(report: dict[str, Any]) -> str:
    """Render a ``universality_report`` dict as a short plain-text block.

    Args:
        report: the dict returned by ``universality_report``.

    Returns:
        Several lines of text, ending with the verdict paragraph.
    """
    missing = {"degree", "order", "orbit_counts", "molien", "verdict"} - set(report)
    if missing:
        raise MetasymError(
            f"report is missing keys {sorted(missing)}; pass the dict from universality_report"
        )
    counts = ", ".join(f"k={k}: {c}" for k, c in sorted(report["orbit_counts"].items()))
    det = report.get("determining_order")
    det_text = "unknown" if det is None else str(det)
    lines = [
        f"group: order {report['order']} on {report['degree']} points",
        f"orbits on [n]^k: {counts}",
        f"Molien coefficients (degree 0..{len(report['molien']) - 1}): "
        + " ".join(str(c) for c in report["molien"]),
        f"2-closure order: {report.get('two_closure_order')}"
        f" ({'2-closed' if report.get('two_closed') else 'not 2-closed'})",
        f"determining order: {det_text}",
        f"verdict: {report['verdict']}",
    ]
    return "\n".join(lines)
