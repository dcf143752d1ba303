"""Tests for metasym.groups: constructors, names, orbits and the equivariant sharing basis."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from metasym import MetasymError
from metasym import groups as G


def _perm_matrix(p: np.ndarray) -> torch.Tensor:
    """``P`` with ``(P x)[p(j)] = x[j]``."""
    n = p.size
    P = torch.zeros(n, n, dtype=torch.float64)
    P[torch.as_tensor(p), torch.arange(n)] = 1.0
    return P


def _max_equivariance_gap(W: torch.Tensor, g, n_out: int) -> float:
    gaps = []
    for p in G.generator_arrays(g):
        P_out = _perm_matrix(p[:n_out])
        P_in = _perm_matrix(p[n_out:] - n_out)
        gaps.append(float((W @ P_in - P_out @ W).abs().max()))
    return max(gaps, default=0.0)


def _brute_pair_orbit_count(g, n_out: int, n_in: int) -> int:
    """Number of orbits on output x input pairs, by listing every group element."""
    elems = G._elements(g)
    seen: set[tuple[int, int]] = set()
    count = 0
    for o, i in itertools.product(range(n_out), range(n_in)):
        if (o, i) in seen:
            continue
        count += 1
        for p in elems:
            seen.add((int(p[o]), int(p[n_out + i] - n_out)))
    return count


@pytest.mark.parametrize(
    ("group", "size", "name"),
    [
        (G.trivial(4), 1, "trivial"),
        (G.cyclic(7), 7, "C_7"),
        (G.dihedral(6), 12, "D_6"),
        (G.dihedral(3), 6, "S_3"),
        (G.symmetric(5), 120, "S_5"),
        (G.alternating(5), 60, "A_5"),
        (G.alternating(4), 12, "A_4"),
        (G.grid_rotations(5), 4, "C_4"),
        (G.grid_dihedral(4), 8, "D_4"),
        (G.grid_flips(3, 4), 4, "C_2 x C_2"),
        (G.from_generators([[1, 0, 3, 4, 2]], 5), 6, "C_6"),
        (G.direct_product(G.cyclic(4), G.cyclic(6)), 24, "C_2 x C_12"),
        (G.torus_p4(4), 64, "group of order 64"),
        (G.direct_product(G.symmetric(4), G.dihedral(5)), 240, "S_4 x D_5"),
        (G.diagonal_action(G.cyclic(16)), 16, "C_16"),
        (G.diagonal_action(G.symmetric(5)), 120, "S_5"),
        (G.lifting_p4(8), 256, "group of order 256"),
    ],
)
def test_orders_and_names(group, size: int, name: str) -> None:
    assert G.order(group) == size
    assert G.group_name(group) == name


def test_torus_p4_order_and_moves() -> None:
    n = 5
    g = G.torus_p4(n)
    assert G.order(g) == 4 * n * n
    # The rotation about pixel (0, 0) fixes that pixel.
    rot = G.generator_arrays(g)[2]
    assert rot[0] == 0
    assert G.contains(g, np.roll(np.arange(n * n), n))  # translation by one row


def test_layer_group_split_and_errors() -> None:
    g = G.layer_group([[1, 2, 0]], [[1, 0]])
    assert g.degree == 5 and G.order(g) == 6
    on_out, on_in = G.split_action(g, 3)
    assert G.order(on_out) == 3 and G.order(on_in) == 2
    with pytest.raises(MetasymError, match="mixes output"):
        G.split_action(G.cyclic(5), 3)
    with pytest.raises(MetasymError, match="permutation of 0..2"):
        G.from_generators([[0, 0, 1]], 3)
    with pytest.raises(MetasymError, match="pair up"):
        G.layer_group([[0, 1]], [])
    with pytest.raises(MetasymError, match="n must be an integer >= 3"):
        G.dihedral(2)


def test_orbits_on_tuples_counts() -> None:
    # S_n has two orbits on pairs (equal, distinct) and five on triples (Bell number B_3).
    assert int(G.orbits_on_tuples(G.symmetric(5), 2).max()) + 1 == 2
    assert int(G.orbits_on_tuples(G.symmetric(5), 3).max()) + 1 == 5
    labels = G.orbits_on_tuples(G.cyclic(6), 2)
    assert labels.shape == (6, 6)
    # For C_n, the orbit of (a, b) is fixed by b - a mod n.
    for a, b in itertools.product(range(6), repeat=2):
        assert labels[a, b] == labels[0, (b - a) % 6]


@pytest.mark.parametrize(
    ("base", "n"),
    [(G.cyclic(7), 7), (G.dihedral(6), 6), (G.symmetric(5), 5)],
)
def test_sharing_matrix_is_equivariant(base, n: int) -> None:
    g = G.diagonal_action(base)
    U = G.sharing_matrix(g, n, n, dtype=torch.float64)
    v = torch.randn(U.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    W = (U @ v).reshape(n, n)  # (o, i)
    assert _max_equivariance_gap(W, g, n) < 1e-6


def test_sharing_matrix_column_counts() -> None:
    for n in (3, 5, 8):
        assert G.sharing_matrix(G.diagonal_action(G.cyclic(n)), n, n).shape == (n * n, n)
        assert G.sharing_matrix(G.diagonal_action(G.symmetric(n)), n, n).shape == (n * n, 2)
    for n in (3, 4, 5, 6, 7):
        g = G.diagonal_action(G.dihedral(n))
        assert G.sharing_matrix(g, n, n).shape[1] == _brute_pair_orbit_count(g, n, n)
    # A layer group that is not diagonal.
    g = G.layer_group([[1, 2, 0, 4, 3]], [[1, 0, 3, 2]])
    assert G.sharing_matrix(g, 5, 4).shape[1] == _brute_pair_orbit_count(g, 5, 4)
    U = G.sharing_matrix(g, 5, 4)
    assert torch.equal(U.sum(1), torch.ones(20))  # each position in exactly one orbit


def _lifting_weight(f: torch.Tensor, n: int) -> torch.Tensor:
    """Weight matrix of ``out[r, q] = sum_u f(u) img(q + R^r u)`` with a 3x3 filter."""
    W = torch.zeros(4 * n * n, n * n, dtype=torch.float64)
    for r in range(4):
        for qy, qx in itertools.product(range(n), repeat=2):
            for uy, ux in itertools.product((-1, 0, 1), repeat=2):
                # R (y, x) = (x, -y), applied r times.
                ry, rx = uy, ux
                for _ in range(r):
                    ry, rx = rx, -ry
                p = ((qy + ry) % n) * n + (qx + rx) % n
                W[r * n * n + qy * n + qx, p] += f[uy + 1, ux + 1]
    return W


def test_lifting_p4_convention_matches_the_convolution() -> None:
    n = 8
    g = G.lifting_p4(n)
    assert g.degree == 5 * n * n and G.is_layer_group(g, 4 * n * n)
    f = torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    W = _lifting_weight(f, n)
    assert _max_equivariance_gap(W, g, 4 * n * n) < 1e-12
    # Rotating the filter the other way (out[r] uses R^-r) needs the action r -> r - s instead.
    m = n * n
    W_bad = torch.cat([W[:m], W[3 * m :], W[2 * m : 3 * m], W[m : 2 * m]])
    assert _max_equivariance_gap(W_bad, g, 4 * n * n) > 1e-3


def test_lifting_p4_sharing_matrix_is_equivariant_and_fast() -> None:
    n = 8
    g = G.lifting_p4(n)
    U = G.sharing_matrix(g, 4 * n * n, n * n, dtype=torch.float64)
    assert U.shape == (4 * n * n * n * n, n * n)  # the regular action on outputs: |G| = 256
    v = torch.randn(U.shape[1], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    W = (U @ v).reshape(4 * n * n, n * n)
    assert _max_equivariance_gap(W, g, 4 * n * n) < 1e-6
    # The lifting convolution with any 3x3 filter lies in the span of U.
    f = torch.randn(3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    w = _lifting_weight(f, n).reshape(-1)
    coef = torch.linalg.lstsq(U, w[:, None]).solution
    assert float((U @ coef - w[:, None]).abs().max()) < 1e-9
