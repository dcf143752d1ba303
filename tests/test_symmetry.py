"""Tests for metasym.analysis.symmetry: groups recovered from tie partitions, and equivariance."""

from __future__ import annotations

import math
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metasym import MetasymError
from metasym import groups as G
from metasym.analysis.partition import tie_partition
from metasym.analysis.symmetry import (
    banded_toeplitz_offsets,
    compare_groups,
    describe_sharing,
    equivariance_error,
    preserves_pattern,
    sharing_group,
)


def _valid_conv(n_in: int, taps: int) -> torch.Tensor:
    n_out = n_in - taps + 1
    d = torch.arange(n_in)[None, :] - torch.arange(n_out)[:, None]  # (o, i)
    return torch.where((d >= 0) & (d < taps), d, torch.full_like(d, -1))


def test_circulant_pattern_is_cyclic() -> None:
    n = 6
    labels = (torch.arange(n)[None, :] - torch.arange(n)[:, None]) % n
    found = sharing_group(labels)
    assert G.order(found) == 6 and G.group_name(found) == "C_6"
    assert compare_groups(found, G.diagonal_action(G.cyclic(n))) == "equal"
    assert preserves_pattern(found, labels)


def test_symmetric_and_dihedral_diagonal_sharing() -> None:
    s5 = G.diagonal_action(G.symmetric(5))
    found = sharing_group(G.pair_orbits(s5, 5, 5))
    assert G.order(found) == 120 and G.group_name(found) == "S_5"
    assert compare_groups(found, s5) == "equal"

    d6 = G.diagonal_action(G.dihedral(6))
    found = sharing_group(G.pair_orbits(d6, 6, 6))
    assert G.order(found) == 12 and G.group_name(found) == "D_6"
    assert compare_groups(found, d6) == "equal"
    assert compare_groups(G.diagonal_action(G.cyclic(6)), found) == "subgroup"
    assert compare_groups(found, G.diagonal_action(G.cyclic(6))) == "supergroup"


def test_valid_convolution_has_no_exact_symmetry() -> None:
    labels = _valid_conv(8, 3)
    assert labels.shape == (6, 8)
    # The flip o -> 5 - o, i -> 7 - i would swap the first and last taps, and the edges rule out
    # translations, so only the identity preserves the pattern.
    assert G.order(sharing_group(labels)) == 1
    info = describe_sharing(labels)
    assert info["order"] == 1 and not info["exact_symmetry"]
    assert info["name"] == "trivial" and info["generators"] == []
    assert info["banded_toeplitz"] == {"offsets": [0, 1, 2]}
    assert info["summary"].startswith("no exact symmetry")
    assert info["num_classes"] == 3
    # With the two outer taps tied, the flip becomes a symmetry.
    tied = torch.where(labels == 2, torch.zeros_like(labels), labels)
    assert G.order(sharing_group(tied)) == 2


def test_banded_toeplitz_detection() -> None:
    assert banded_toeplitz_offsets(_valid_conv(10, 4)) == [0, 1, 2, 3]
    circulant = (torch.arange(5)[None, :] - torch.arange(5)[:, None]) % 5
    assert banded_toeplitz_offsets(circulant) is None  # Toeplitz, but no zero band
    assert banded_toeplitz_offsets(torch.arange(12).reshape(3, 4)) is None
    assert describe_sharing(circulant)["banded_toeplitz"] is None


def test_random_distinct_classes_are_trivial() -> None:
    labels = torch.randperm(7 * 5, generator=torch.Generator().manual_seed(0)).reshape(7, 5)
    info = describe_sharing(labels)
    assert info["order"] == 1 and info["summary"] == "no exact symmetry"


def test_all_tied_gives_product_of_symmetric_groups() -> None:
    found = sharing_group(torch.zeros(3, 4, dtype=torch.long))
    assert G.order(found) == 6 * 24
    assert G.group_name(found) == "S_3 x S_4"
    # Too big for sympy's order: describe_sharing counts with BLISS and names via Jordan's theorem.
    info = describe_sharing(torch.full((30, 20), -1))
    assert info["order"] == math.factorial(30) * math.factorial(20)
    assert info["name"] == "S_30 x S_20"


def test_lifting_p4_pattern_recovers_p4() -> None:
    n = 8
    true = G.lifting_p4(n)
    U = G.sharing_matrix(true, 4 * n * n, n * n, dtype=torch.float64)
    A = torch.randn(n * n, n * n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = tie_partition(U @ A, n_out=4 * n * n, n_in=n * n)
    start = time.perf_counter()
    found = sharing_group(labels)
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0
    assert G.order(found) == 256
    assert compare_groups(found, true) == "equal"
    info = describe_sharing(labels)
    assert info["order"] == 256 and info["exact_symmetry"]
    assert "256" in info["name"]


def test_equivariance_error() -> None:
    gen = torch.Generator().manual_seed(2)
    for base, n in ((G.cyclic(7), 7), (G.dihedral(6), 6), (G.symmetric(5), 5)):
        g = G.diagonal_action(base)
        U = G.sharing_matrix(g, n, n)
        assert equivariance_error(U, g, n, n, generator=gen) < 1e-6
        assert equivariance_error(U.reshape(n, n, -1), g, n, n, generator=gen) < 1e-6
        assert equivariance_error(torch.randn(n * n, 5, generator=gen), g, n, n) > 0.1
    # A fixed circulant matrix through the sampler form.
    c = torch.randn(6, generator=gen)
    idx = (torch.arange(6)[None, :] - torch.arange(6)[:, None]) % 6
    g = G.diagonal_action(G.cyclic(6))
    assert equivariance_error(lambda _: c[idx], g, 6, 6) < 1e-6
    assert equivariance_error(lambda _: c[idx].T, g, 6, 6) < 1e-6
    assert equivariance_error(lambda _: c[idx], G.diagonal_action(G.symmetric(6)), 6, 6) > 0.1
    # The p4 lifting layer.
    p4 = G.lifting_p4(8)
    U = G.sharing_matrix(p4, 256, 64)
    assert equivariance_error(U, p4, 256, 64, num_samples=4) < 1e-6
    assert equivariance_error(torch.randn(256 * 64, 9), p4, 256, 64, num_samples=4) > 0.1
    assert equivariance_error(U, G.trivial(320), 256, 64) == 0.0


def test_bad_input() -> None:
    with pytest.raises(MetasymError, match=r"\(o, i\) matrix"):
        sharing_group(torch.zeros(4, dtype=torch.long))
    with pytest.raises(MetasymError, match="integer classes"):
        sharing_group(torch.zeros(2, 2))
    with pytest.raises(MetasymError, match="same points"):
        compare_groups(G.cyclic(3), G.cyclic(4))
    g = G.diagonal_action(G.cyclic(3))
    with pytest.raises(MetasymError, match=r"shape \(9, k\)"):
        equivariance_error(torch.zeros(8, 2), g, 3, 3)
    with pytest.raises(MetasymError, match="degree 6"):
        equivariance_error(torch.zeros(12, 2), g, 3, 4)


@st.composite
def _layer_groups(draw: st.DrawFn) -> tuple:
    n_out = draw(st.integers(1, 5))
    n_in = draw(st.integers(1, 5))
    num = draw(st.integers(1, 3))
    outs = [draw(st.permutations(range(n_out))) for _ in range(num)]
    ins = [draw(st.permutations(range(n_in))) for _ in range(num)]
    return G.layer_group(outs, ins), n_out, n_in


@settings(max_examples=40, deadline=None)
@given(_layer_groups())
def test_recovered_group_contains_the_generating_group(case: tuple) -> None:
    g, n_out, n_in = case
    labels = G.pair_orbits(g, n_out, n_in)
    found = sharing_group(labels)
    assert compare_groups(found, g) in ("equal", "supergroup")
    assert preserves_pattern(found, labels)
    # found contains g and preserves the classes (the g-orbits), so its orbits are the classes.
    assert torch.equal(G.pair_orbits(found, n_out, n_in), labels)
