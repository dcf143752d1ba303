"""From a tie partition to the symmetry group it carries, and how equivariant a layer is.

A tie partition labels every weight position ``(o, i)`` with a class (``-1`` for a zero weight).
Its symmetry group is the set of pairs ``(s_out, s_in)`` of permutations of outputs and inputs
with ``class(s_out(o), s_in(i)) = class(o, i)`` for all positions: exactly the permutations that
every weight matrix ``W = reshape(U v)`` with that sharing commutes with (arXiv 2007.02933).

Groups are layer groups (see ``metasym.groups``): degree ``o + i``, outputs first. A permutation
``s`` acts on a vector by moving entries, ``(P_s x)[s(j)] = x[j]``, and a layer is equivariant
under ``g = (s_out, s_in)`` when ``W P_in = P_out W``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import igraph
import numpy as np
import torch
from sympy.combinatorics import PermutationGroup

from metasym import groups
from metasym.errors import MetasymError

__all__ = [
    "Comparison",
    "WeightSampler",
    "banded_toeplitz_offsets",
    "compare_groups",
    "describe_sharing",
    "equivariance_error",
    "preserves_pattern",
    "sharing_group",
]

Comparison = str
"""One of ``"equal"``, ``"subgroup"``, ``"supergroup"``, ``"incomparable"``."""

WeightSampler = Callable[[torch.Generator], torch.Tensor]
"""Draws one weight matrix ``(o, i)`` from the seeded generator it is given."""


def _check_labels(labels: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if arr.ndim != 2 or 0 in arr.shape:
        raise MetasymError(f"labels must be a non-empty (o, i) matrix; got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise MetasymError(f"labels must hold integer classes; got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _coloured_graph(arr: np.ndarray) -> tuple[igraph.Graph, list[int]]:
    """The vertex-coloured graph whose automorphisms are the symmetries of a tie partition."""
    n_out, n_in = arr.shape
    units = n_out + n_in

    # Colours: 0 outputs, 1 inputs, 2 + class rank for positions.
    _, cls = np.unique(arr.reshape(-1), return_inverse=True)
    colors = np.concatenate([np.zeros(n_out), np.ones(n_in), 2 + cls.reshape(-1)]).astype(int)
    pos = units + np.arange(n_out * n_in)
    o, i = np.divmod(np.arange(n_out * n_in), n_in)
    edges = np.concatenate([np.stack([o, pos], 1), np.stack([n_out + i, pos], 1)])
    graph = igraph.Graph(n=units + n_out * n_in, edges=edges.tolist(), directed=False)
    return graph, colors.tolist()


def _count_automorphisms(arr: np.ndarray) -> int:
    """The order of the symmetry group of a tie partition, counted by BLISS."""
    graph, colors = _coloured_graph(arr)
    return int(graph.count_automorphisms(sh="fl", color=colors))


def sharing_group(labels: torch.Tensor | np.ndarray) -> PermutationGroup:
    """The layer group of all ``(s_out, s_in)`` that preserve a tie partition.

    Computed as the automorphism group of a vertex-coloured graph (BLISS, through igraph), never by
    trying permutations: one vertex per output (one colour), per input (another colour) and per
    weight position ``(o, i)`` (coloured by its class, ``-1`` included), with edges
    ``o -- (o, i) -- i``. An automorphism fixes colours, so it maps outputs to outputs, inputs to
    inputs and each position to one of the same class; since a position vertex is determined by its
    two neighbours, automorphisms are exactly the class-preserving pairs ``(s_out, s_in)``.

    Args:
        labels: class of every weight position, ``-1`` for zero weights.

    Returns:
        A group of degree ``o + i``; points ``0 .. o-1`` are outputs. For huge groups (a pattern
        with large blocks of tied weights gives products of big symmetric groups) prefer
        ``describe_sharing``, which counts the order with BLISS: ``sympy``'s ``order()`` and
        membership tests run Schreier-Sims and can take minutes there.

    Shape:
        labels: ``(o, i)``.
    """
    arr = _check_labels(labels)
    units = sum(arr.shape)
    graph, colors = _coloured_graph(arr)
    gens = graph.automorphism_group(sh="fl", color=colors)
    return groups.from_generators([np.asarray(p)[:units] for p in gens], units)


def preserves_pattern(group: PermutationGroup, labels: torch.Tensor | np.ndarray) -> bool:
    """Whether every generator ``(s_out, s_in)`` of ``group`` maps each class onto itself.

    Shape:
        labels: ``(o, i)``; ``group`` has degree ``o + i``.
    """
    arr = _check_labels(labels)
    n_out, n_in = arr.shape
    if group.degree != n_out + n_in:
        raise MetasymError(
            f"group of degree {group.degree} does not act on {n_out} outputs + {n_in} inputs"
        )
    for p in groups.generator_arrays(group):
        s_out, s_in = p[:n_out], p[n_out:] - n_out
        if (s_out >= n_out).any() or (s_in < 0).any():
            return False
        if not np.array_equal(arr[np.ix_(s_out, s_in)], arr):
            return False
    return True


def compare_groups(found: PermutationGroup, true: PermutationGroup) -> Comparison:
    """How a recovered group relates to the true one, both acting on the same points.

    Returns:
        ``"equal"``, ``"subgroup"`` (``found`` is a proper subgroup of ``true``), ``"supergroup"``
        or ``"incomparable"``.
    """
    if found.degree != true.degree:
        raise MetasymError(
            f"groups must act on the same points; got degrees {found.degree} and {true.degree}"
        )
    inside = all(true.contains(p) for p in found.generators)
    covers = all(found.contains(p) for p in true.generators)
    if inside and covers:
        return "equal"
    if inside:
        return "subgroup"
    if covers:
        return "supergroup"
    return "incomparable"


def banded_toeplitz_offsets(labels: torch.Tensor | np.ndarray) -> list[int] | None:
    """The offsets ``d = i - o`` of a banded Toeplitz pattern, or ``None`` for other patterns.

    A pattern is banded Toeplitz when the class of ``(o, i)`` depends only on ``i - o`` and some
    offsets are always zero (``-1``): a local translation, as in a valid 1-D convolution. A
    Toeplitz pattern without zero offsets (a dense or circulant matrix) is not banded.

    Shape:
        labels: ``(o, i)``.
    """
    arr = _check_labels(labels)
    n_out, n_in = arr.shape
    d = np.arange(n_in)[None, :] - np.arange(n_out)[:, None]  # (o, i)
    offsets = []
    banded = False
    for off in range(-(n_out - 1), n_in):
        values = np.unique(arr[d == off])
        if values.size != 1:
            return None
        if values[0] == -1:
            banded = True
        else:
            offsets.append(off)
    return offsets if banded and offsets else None


def describe_sharing(labels: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """A summary of the symmetry of a tie partition, ready to write as JSON.

    Returns:
        A dict with ``n_out``, ``n_in``, ``num_classes`` (``-1`` not counted), ``order``,
        ``generators`` (array forms on ``o + i`` points), ``name``, ``exact_symmetry`` (whether
        the group is non-trivial), ``banded_toeplitz`` (``None``, or ``{"offsets": [...]}`` when
        the class depends only on ``i - o`` inside a band: a local translation) and ``summary``,
        a sentence that says ``"no exact symmetry"`` when the group is trivial.

    Shape:
        labels: ``(o, i)``.
    """
    arr = _check_labels(labels)
    n_out, n_in = arr.shape
    group = sharing_group(arr)
    size = _count_automorphisms(arr)
    name = groups.group_name(group, size=size)
    offsets = banded_toeplitz_offsets(arr)

    if size > 1:
        summary = f"exact symmetry: {name}"
        if not name.startswith("group of order"):
            summary += f" (order {size})"
    else:
        summary = "no exact symmetry"
    if offsets is not None:
        summary += f"; banded Toeplitz (local translation) with offsets i - o in {offsets}"
    return {
        "n_out": int(n_out),
        "n_in": int(n_in),
        "num_classes": int(np.unique(arr[arr >= 0]).size),
        "order": size,
        "generators": [p.tolist() for p in groups.generator_arrays(group)],
        "name": name,
        "exact_symmetry": size > 1,
        "banded_toeplitz": None if offsets is None else {"offsets": offsets},
        "summary": summary,
    }


def _permute(x: torch.Tensor, s: np.ndarray) -> torch.Tensor:
    """``P_s x`` on the last axis: the entry at ``j`` moves to ``s(j)``."""
    out = torch.empty_like(x)
    out[..., torch.as_tensor(s)] = x
    return out


def equivariance_error(
    W: torch.Tensor | WeightSampler,
    group: PermutationGroup,
    n_out: int,
    n_in: int,
    num_samples: int = 16,
    generator: torch.Generator | None = None,
) -> float:
    """Mean relative equivariance error of a layer over random weights, inputs and generators.

    For each sample a weight matrix ``W`` and an input ``x ~ N(0, I)`` are drawn, and for each
    generator ``(s_out, s_in)`` of ``group`` the error is

        ``|| W (P_in x) - P_out (W x) || / || W x ||``,   with ``(P_s x)[s(j)] = x[j]``.

    It is zero for every draw exactly when ``W P_in = P_out W``.

    Args:
        W: a sharing matrix ``U`` (then ``W = reshape(U v)`` with ``v ~ N(0, I)``, as in
            arXiv 2007.02933), or a callable that draws a weight matrix from a generator.
        group: a layer group of degree ``n_out + n_in``.
        n_out: number of outputs ``o``.
        n_in: number of inputs ``i``.
        num_samples: number of ``(W, x)`` draws.
        generator: the seeded source of the draws; a fixed seed when ``None``.

    Returns:
        The mean error; ``0.0`` for the trivial group.

    Shape:
        U: ``(o * i, k)`` or ``(o, i, k)``; a sampled weight matrix: ``(o, i)``.
    """
    groups._check_layer(group, n_out, n_in)
    if not isinstance(num_samples, int) or num_samples < 1:
        raise MetasymError(f"num_samples must be a positive integer; got {num_samples!r}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    perms = groups.generator_arrays(group)
    if not perms:
        return 0.0

    # Draw the weight matrices.
    if isinstance(W, torch.Tensor):
        U = W.detach().to(torch.float64).cpu()
        if U.ndim == 3:
            U = U.reshape(-1, U.shape[-1])
        if U.ndim != 2 or U.shape[0] != n_out * n_in:
            raise MetasymError(
                f"U must have shape ({n_out * n_in}, k) or ({n_out}, {n_in}, k); "
                f"got {tuple(W.shape)}"
            )
        v = torch.randn(U.shape[1], num_samples, generator=gen, dtype=torch.float64)
        Ws = (U @ v).T.reshape(num_samples, n_out, n_in)  # (n, o, i)
    elif callable(W):
        draws = [W(gen).detach().to(torch.float64).cpu() for _ in range(num_samples)]
        for w in draws:
            if tuple(w.shape) != (n_out, n_in):
                raise MetasymError(
                    f"the weight sampler must return shape ({n_out}, {n_in}); got {tuple(w.shape)}"
                )
        Ws = torch.stack(draws)
    else:
        raise MetasymError(f"W must be a tensor U or a weight sampler; got {type(W).__name__}")
    x = torch.randn(num_samples, n_in, generator=gen, dtype=torch.float64)

    # Compare W P_in x with P_out W x for each generator.
    Wx = torch.einsum("noi,ni->no", Ws, x)
    scale = Wx.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
    errors = []
    for p in perms:
        s_out, s_in = p[:n_out], p[n_out:] - n_out
        lhs = torch.einsum("noi,ni->no", Ws, _permute(x, s_in))
        errors.append((lhs - _permute(Wx, s_out)).norm(dim=1) / scale)
    return float(torch.stack(errors).mean())
