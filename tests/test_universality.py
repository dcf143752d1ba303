"""Tests for metasym.analysis.universality and metasym.analysis.invariant_nets."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch
from sympy.combinatorics import Permutation, PermutationGroup
from sympy.combinatorics.named_groups import (
    AlternatingGroup,
    CyclicGroup,
    DihedralGroup,
    SymmetricGroup,
)

from metasym.analysis import universality as uni
from metasym.analysis.invariant_nets import (
    EquivariantLinear,
    InvariantNetwork,
    fit_invariant_network,
    lift,
    vandermonde,
)
from metasym.analysis.universality import (
    determining_order,
    equivariant_dim,
    first_invariant_difference,
    format_report,
    is_two_closed,
    k_closure,
    molien_series,
    orbit_count,
    tuple_orbit_labels,
    two_closure,
    universality_report,
)
from metasym.errors import MetasymError

torch.set_num_threads(1)

NAMED = {
    "S4": SymmetricGroup(4),
    "A4": AlternatingGroup(4),
    "C4": CyclicGroup(4),
    "D4": DihedralGroup(4),
}


def _small_groups() -> list[PermutationGroup]:
    """A mix of transitive, intransitive, 2-closed and not 2-closed groups on at most 6 points."""
    return [
        CyclicGroup(4),
        DihedralGroup(4),
        AlternatingGroup(4),
        SymmetricGroup(4),
        PermutationGroup([Permutation([1, 0, 2, 3]), Permutation([0, 1, 3, 2])]),
        PermutationGroup([Permutation([1, 0, 3, 2]), Permutation([2, 3, 0, 1])]),
        CyclicGroup(5),
        DihedralGroup(5),
        AlternatingGroup(5),
        PermutationGroup([Permutation([1, 2, 0, 4, 5, 3])]),
        PermutationGroup([Permutation([1, 2, 3, 4, 5, 0]), Permutation([1, 0, 2, 3, 4, 5])]),
        AlternatingGroup(3),
    ]


def _brute_orbits(group: PermutationGroup, k: int) -> set[frozenset[tuple[int, ...]]]:
    """G's orbits on [n]^k by applying every element to every tuple."""
    elements = list(group.generate(af=True))
    orbits = set()
    for t in itertools.product(range(group.degree), repeat=k):
        orbits.add(frozenset(tuple(g[i] for i in t) for g in elements))
    return orbits


def _brute_closure(group: PermutationGroup, k: int) -> set[tuple[int, ...]]:
    """All of S_n that maps every orbit on [n]^k to itself."""
    labels = tuple_orbit_labels(group, k)
    n = group.degree
    tuples = list(itertools.product(range(n), repeat=k))
    keep = set()
    for perm in itertools.permutations(range(n)):
        if all(labels[t] == labels[tuple(perm[i] for i in t)] for t in tuples):
            keep.add(perm)
    return keep


# Orbit counts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("S4", [1, 2, 5, 15]), ("A4", [1, 2, 6, 22]), ("C4", [1, 4, 16, 64]), ("D4", [1, 3, 10, 36])],
)
def test_orbit_counts_table(name: str, expected: list[int]) -> None:
    group = NAMED[name]
    assert [orbit_count(group, k) for k in range(1, 5)] == expected
    assert orbit_count(group, 0) == 1
    assert equivariant_dim(group, 1, 1) == expected[1]
    assert equivariant_dim(group, 2, 1) == expected[2]


@pytest.mark.parametrize("group", _small_groups())
def test_orbit_counts_match_brute_force(group: PermutationGroup) -> None:
    for k in range(1, 4):
        orbits = _brute_orbits(group, k)
        assert orbit_count(group, k) == len(orbits)

        # The labels induce exactly the brute-force partition.
        labels = tuple_orbit_labels(group, k)
        for orbit in orbits:
            assert len({int(labels[t]) for t in orbit}) == 1
        assert int(labels.max()) + 1 == len(orbits)
        assert labels.reshape(-1)[0] == 0


def test_tuple_labels_are_read_only_and_checked() -> None:
    labels = tuple_orbit_labels(NAMED["A4"], 2)
    assert labels.shape == (4, 4)
    with pytest.raises(ValueError):
        labels[0, 0] = 5
    with pytest.raises(MetasymError, match="k must be"):
        orbit_count(NAMED["A4"], -1)
    with pytest.raises(MetasymError, match="PermutationGroup"):
        orbit_count("S4", 2)  # type: ignore[arg-type]


def test_counts_for_order_5040_are_fast() -> None:
    uni._cycle_type_counts_cached.cache_clear()
    start = time.perf_counter()
    group = SymmetricGroup(7)
    counts = [orbit_count(group, k) for k in range(1, 5)]
    molien = molien_series(group, 8)
    elapsed = time.perf_counter() - start
    assert counts == [1, 2, 5, 15]  # Bell numbers while k <= n
    assert molien == [1, 1, 2, 3, 5, 7, 11, 15, 21]  # partitions of d into at most 7 parts
    assert elapsed < 1.0

    start = time.perf_counter()
    assert orbit_count(AlternatingGroup(7), 3) == 5
    assert time.perf_counter() - start < 1.0


# Molien series -------------------------------------------------------------------------------


def test_molien_table_and_first_difference() -> None:
    assert molien_series(NAMED["S4"], 7) == [1, 1, 2, 3, 5, 6, 9, 11]
    assert molien_series(NAMED["A4"], 7) == [1, 1, 2, 3, 5, 6, 10, 12]
    assert first_invariant_difference(NAMED["A4"], NAMED["S4"], 10) == 6
    assert first_invariant_difference(NAMED["A4"], NAMED["S4"], 5) is None
    assert first_invariant_difference(NAMED["C4"], NAMED["D4"], 8) == 3


def test_first_difference_checks_the_supergroup() -> None:
    with pytest.raises(MetasymError, match="does not contain"):
        first_invariant_difference(NAMED["S4"], NAMED["A4"], 6)
    with pytest.raises(MetasymError, match="different numbers of points"):
        first_invariant_difference(CyclicGroup(4), SymmetricGroup(5), 6)


@pytest.mark.parametrize("group", _small_groups()[:9])
def test_molien_matches_monomial_orbits(group: PermutationGroup) -> None:
    # Invariant polynomials of degree d are spanned by orbit sums of degree-d monomials.
    n = group.degree
    elements = list(group.generate(af=True))
    expected = []
    for d in range(7):
        exponents = [e for e in itertools.product(range(d + 1), repeat=n) if sum(e) == d]
        orbits = set()
        for e in exponents:
            # g moves variable i to g[i], so the exponent of variable g[i] becomes e[i].
            orbits.add(
                frozenset(tuple(e[g.index(j)] for j in range(n)) for g in map(list, elements))
            )
        expected.append(len(orbits))
    assert molien_series(group, 6) == expected


# Closures ------------------------------------------------------------------------------------


def test_two_closure_of_a4_is_s4() -> None:
    closure = two_closure(NAMED["A4"])
    assert closure.order() == 24
    assert not is_two_closed(NAMED["A4"])
    assert NAMED["A4"].is_subgroup(closure)


@pytest.mark.parametrize("n", [4, 5, 6, 7])
def test_cyclic_dihedral_symmetric_are_two_closed(n: int) -> None:
    for group in (CyclicGroup(n), DihedralGroup(n), SymmetricGroup(n)):
        assert is_two_closed(group)


@pytest.mark.parametrize("group", _small_groups())
def test_two_closure_matches_brute_force(group: PermutationGroup) -> None:
    closure = two_closure(group)
    brute = _brute_closure(group, 2)
    assert closure.order() == len(brute)
    assert {tuple(p) for p in closure.generate(af=True)} == brute


def test_three_closure_matches_brute_force() -> None:
    for group in (AlternatingGroup(4), AlternatingGroup(5), CyclicGroup(5)):
        closure = k_closure(group, 3)
        assert {tuple(p) for p in closure.generate(af=True)} == _brute_closure(group, 3)


def test_determining_orders() -> None:
    assert determining_order(SymmetricGroup(4)) == 1
    assert determining_order(CyclicGroup(4)) == 2
    assert determining_order(DihedralGroup(6)) == 2
    assert determining_order(AlternatingGroup(4)) == 3
    # A_n has the orbits of S_n on tuples of length up to n - 2.
    assert determining_order(AlternatingGroup(5)) == 4
    assert determining_order(AlternatingGroup(6), max_k=4) is None


def test_closure_size_limit_is_named() -> None:
    with pytest.raises(MetasymError, match="MAX_CLOSURE_TUPLES"):
        k_closure(SymmetricGroup(12), 5)
    with pytest.raises(MetasymError, match="k must be"):
        k_closure(SymmetricGroup(4), 0)


# Report --------------------------------------------------------------------------------------


def test_report_for_a4() -> None:
    report = universality_report(NAMED["A4"], max_order=3, molien_degree=8)
    assert report["order"] == 12
    assert report["orbit_counts"] == {1: 1, 2: 2, 3: 6, 4: 22}
    assert report["molien"][:8] == [1, 1, 2, 3, 5, 6, 10, 12]
    assert report["two_closure_order"] == 24
    assert report["two_closed"] is False
    assert report["determining_order"] == 3
    assert report["molien_difference_degree"] == 6
    assert "not 2-closed" in report["verdict"]
    text = format_report(report)
    assert "determining order: 3" in text
    assert "1 1 2 3 5 6 10 12" in text


def test_report_for_a_two_closed_group() -> None:
    report = universality_report(DihedralGroup(5))
    assert report["two_closed"] is True
    assert report["determining_order"] == 2
    assert report["molien_difference_degree"] is None
    assert "is 2-closed" in report["verdict"]
    with pytest.raises(MetasymError, match="missing keys"):
        format_report({"order": 3})


# Equivariant layers and invariant networks ---------------------------------------------------


def _act(x: torch.Tensor, perm: list[int], order: int) -> torch.Tensor:
    """Permute every point axis of ``(N, c, n, ..., n)`` by ``perm``: out[.., perm[j], ..] = x."""
    inverse = torch.as_tensor(np.argsort(perm))
    for axis in range(2, 2 + order):
        x = x.index_select(axis, inverse)
    return x


@pytest.mark.parametrize(("k_in", "k_out"), [(0, 1), (1, 0), (1, 1), (1, 2), (2, 2), (3, 1)])
@pytest.mark.parametrize("name", ["A4", "D4"])
def test_equivariant_linear_commutes_with_group(name: str, k_in: int, k_out: int) -> None:
    group = NAMED[name]
    gen = torch.Generator().manual_seed(1)
    layer = EquivariantLinear(group, k_in, k_out, 2, 3, generator=gen)
    with torch.no_grad():
        layer.bias.normal_(generator=gen)  # type: ignore[union-attr]
    assert layer.weight.shape[-1] == equivariant_dim(group, k_in, k_out)
    x = torch.randn((5, 2) + (4,) * k_in, generator=gen)
    for g in group.generators:
        perm = list(g.array_form)
        lhs = layer(_act(x, perm, k_in))
        rhs = _act(layer(x), perm, k_out)
        assert torch.allclose(lhs, rhs, atol=1e-5)
    with pytest.raises(MetasymError, match="expected input of shape"):
        layer(torch.randn((5, 3) + (4,) * k_in))


def test_s4_layer_spans_identity_and_all_ones() -> None:
    # The S_n-equivariant maps R^n -> R^n are a I + b 11^T.
    layer = EquivariantLinear(NAMED["S4"], 1, 1, 1, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[[2.0, 0.5]]]))
    dense = layer.dense_weight()[0, 0]
    assert torch.allclose(dense, 0.5 + 1.5 * torch.eye(4))


def test_lift_is_the_tensor_power() -> None:
    x = torch.randn(3, 4)
    assert torch.allclose(lift(x, 3)[:, 0], torch.einsum("Na,Nb,Nc->Nabc", x, x, x))
    with pytest.raises(MetasymError, match="order must be"):
        lift(x, 4)


@pytest.mark.parametrize("name", ["C4", "D4", "A4", "S4"])
@pytest.mark.parametrize("max_order", [1, 2, 3])
def test_network_is_exactly_invariant(name: str, max_order: int) -> None:
    group = NAMED[name]
    net = InvariantNetwork(group, max_order, hidden=4, depth=2, seed=3)
    x = torch.rand(16, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        out = net(x)
        for g in group.generators:
            assert torch.allclose(net(x[:, g.array_form]), out, atol=1e-5)


@pytest.mark.parametrize(("name", "max_order"), [("C4", 1), ("D4", 1), ("A4", 2), ("A4", 3)])
def test_network_sees_permutations_outside_the_group(name: str, max_order: int) -> None:
    net = InvariantNetwork(NAMED[name], max_order, hidden=4, depth=2, seed=3)
    x = torch.rand(16, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    outside = [1, 0, 2, 3]  # a transposition: odd, and neither a rotation nor a reflection
    assert not NAMED[name].contains(Permutation(outside))
    with torch.no_grad():
        gap = (net(x[:, outside]) - net(x)).abs().max()
    assert gap > 1e-3


def test_first_order_a4_network_is_s4_invariant() -> None:
    # A_4 and S_4 have the same orbits on pairs, so first-order A_4 layers are S_4-equivariant.
    net = InvariantNetwork(NAMED["A4"], 1, hidden=4, depth=2, seed=3)
    x = torch.rand(16, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(net(x[:, [1, 0, 2, 3]]), net(x), atol=1e-5)


def test_vandermonde_is_alternating() -> None:
    x = torch.randn(8, 4)
    v = vandermonde(x)
    assert torch.allclose(vandermonde(x[:, [1, 2, 0, 3]]), v, atol=1e-5)
    assert torch.allclose(vandermonde(x[:, [1, 0, 2, 3]]), -v, atol=1e-5)


def test_network_checks_its_arguments() -> None:
    with pytest.raises(MetasymError, match="max_order"):
        InvariantNetwork(NAMED["A4"], 4)
    with pytest.raises(MetasymError, match="activation"):
        InvariantNetwork(NAMED["A4"], 1, activation="softmax")
    with pytest.raises(MetasymError, match=r"shape \(N, 4\)"):
        InvariantNetwork(NAMED["A4"], 1)(torch.zeros(2, 5))


@pytest.mark.slow
def test_expressivity_by_order() -> None:
    # First-order A_4 networks are S_4-invariant and cannot fit an S_4-alternating target;
    # networks at the determining order of A_4 can.
    group = NAMED["A4"]
    settings = {"n_train": 1000, "n_test": 1000, "steps": 500, "hidden": 8, "seed": 0}
    first = fit_invariant_network(group, 1, **settings)  # type: ignore[arg-type]
    third = fit_invariant_network(group, 3, **settings)  # type: ignore[arg-type]
    assert first < 0.1
    assert third > 0.8
