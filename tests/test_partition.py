"""Tests for metasym.analysis.partition: tie partitions of sharing matrices and their distances."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from metasym import MetasymError
from metasym import groups as G
from metasym.analysis.partition import (
    adjusted_rand_index,
    partition_distance,
    row_scale,
    tie_partition,
)


def _one_hot_U(labels: torch.Tensor, k: int) -> torch.Tensor:
    U = torch.zeros(labels.numel(), k, dtype=torch.float64)
    keep = labels.reshape(-1) >= 0
    U[keep, labels.reshape(-1)[keep]] = 1.0
    return U


def test_exact_pattern_survives_any_invertible_map() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([[0, 1, -1], [1, 0, 2], [-1, 2, 0]])
    U = _one_hot_U(labels, 3)
    A = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    for M in (U, U @ A, 1e-4 * U @ A, 1e5 * U @ A):
        got = tie_partition(M, n_out=3, n_in=3)
        assert got.shape == (3, 3) and got.dtype == torch.long
        assert torch.equal(got, labels)
    assert torch.equal(tie_partition(U.reshape(3, 3, 3)), labels)
    assert tie_partition(U).shape == (9,)


def test_noisy_rows_and_zero_rows() -> None:
    gen = torch.Generator().manual_seed(1)
    n, k = 400, 6
    labels = torch.randint(-1, k, (n,), generator=gen)
    U = _one_hot_U(labels, k) @ torch.randn(k, k, generator=gen, dtype=torch.float64)
    U = U + 0.005 * row_scale(U) * torch.randn(n, k, generator=gen, dtype=torch.float64)
    got = tie_partition(U)
    assert partition_distance(got, labels) == 0
    assert adjusted_rand_index(got, labels) == pytest.approx(1.0)


def test_explicit_tolerances() -> None:
    U = torch.tensor([[1.0, 0.0], [1.05, 0.0], [0.0, 1.0], [0.0, 0.01]])
    assert tie_partition(U, zero_tol=0.1, tie_tol=0.1).tolist() == [0, 0, 1, -1]
    assert tie_partition(U, zero_tol=0.001, tie_tol=0.01).tolist() == [0, 1, 2, 3]
    assert tie_partition(U, zero_tol=0.1, tie_tol=0.0).tolist() == [0, 1, 2, -1]
    assert tie_partition(torch.zeros(5, 3)).tolist() == [-1] * 5


def test_bad_input() -> None:
    with pytest.raises(MetasymError, match="does not match the 9 rows"):
        tie_partition(torch.ones(9, 2), n_out=2, n_in=4)
    with pytest.raises(MetasymError, match=r"\(o\*i, k\) or \(o, i, k\)"):
        tie_partition(torch.ones(9))
    with pytest.raises(MetasymError, match="non-finite"):
        tie_partition(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(MetasymError, match="same number of positions"):
        partition_distance(torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long))


def test_large_pattern_is_fast() -> None:
    gen = torch.Generator().manual_seed(2)
    n, k = 16384, 9
    labels = torch.randint(-1, k, (n,), generator=gen)
    U = _one_hot_U(labels, k) @ torch.randn(k, k, generator=gen, dtype=torch.float64)
    U = U + 0.01 * torch.randn(n, k, generator=gen, dtype=torch.float64)
    start = time.perf_counter()
    got = tie_partition(U)
    assert time.perf_counter() - start < 2.0
    assert partition_distance(got, labels) == 0
    # The p4 lifting pattern: 16384 rows in 64 classes.
    true = G.pair_orbits(G.lifting_p4(8), 256, 64)
    U = G.sharing_matrix(G.lifting_p4(8), 256, 64, dtype=torch.float64)
    A = torch.randn(64, 64, generator=gen, dtype=torch.float64)
    start = time.perf_counter()
    got = tie_partition(U @ A, n_out=256, n_in=64)
    assert time.perf_counter() - start < 2.0
    assert torch.equal(got, true)


@pytest.mark.parametrize(
    ("a", "b", "dist"),
    [
        ([0, 0, 1, 1], [0, 0, 1, 1], 0),
        ([0, 0, 1, 1], [5, 5, 3, 3], 0),
        ([0, 0, 1, 1], [0, 1, 0, 1], 2),
        ([0, 0, 0, 0], [0, 1, 2, 3], 3),
        ([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 1, 2], 1),
        ([-1, -1, 0, 0], [0, 0, 1, 1], 0),
        ([-1, -1, 0, 0], [-1, 0, 0, 0], 1),
        ([0, 1, 2, 3, 4, 5], [1, 2, 0, 4, 5, 3], 0),
        ([0, 0, 1, 1, 2, 2], [0, 1, 1, 2, 2, 0], 3),
    ],
)
def test_partition_distance_known_cases(a: list[int], b: list[int], dist: int) -> None:
    ta, tb = torch.tensor(a), torch.tensor(b)
    assert partition_distance(ta, tb) == dist
    assert partition_distance(tb, ta) == dist
    assert partition_distance(np.array(a), np.array(b), _dense_cells=0) == dist  # sparse path


def test_relabelling_invariance_and_sparse_agrees_with_dense() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        a = rng.integers(-1, 12, size=300)
        b = np.where(rng.random(300) < 0.7, a, rng.integers(-1, 12, size=300))
        d = partition_distance(a, b)
        assert partition_distance(a, b, _dense_cells=0) == d
        # Relabel a by a bijection that sends -1 to an ordinary label and back.
        perm = rng.permutation(13)
        a2 = perm[a + 1] - 1
        assert partition_distance(a2, b) == d
        assert adjusted_rand_index(a2, b) == pytest.approx(adjusted_rand_index(a, b))
    assert adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert adjusted_rand_index([-1, -1, 0, 0], [0, 0, -1, -1]) == pytest.approx(1.0)
