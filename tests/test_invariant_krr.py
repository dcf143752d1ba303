import json

import pytest
import torch
from sympy.combinatorics.named_groups import CyclicGroup

from metasym.errors import MetasymError
from metasym.theory.invariant_krr import (
    act,
    as_permutations,
    averaged_kernel,
    cyclic_target,
    expected_gap,
    fixed_space_dim,
    krr_fit,
    krr_predict,
    linear_gap_closed_form,
    main,
    parse_group,
    rbf_kernel,
    simulate_gap,
    simulate_linear_gap,
)


def _rbf2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # k(x, y) = exp(-|x - y|^2 / (2 * 2^2))
    return rbf_kernel(x, y, 2.0)


def test_action_convention_and_composition() -> None:
    perms = parse_group("dihedral:5")
    x = torch.arange(5.0)
    moved = act(perms, x)  # (g, d)
    for a, sigma in enumerate(perms):
        # coordinate i moves to position sigma(i)
        assert torch.equal(moved[a, sigma], x)
    # (gh)·x = g·(h·x) with (gh)(i) = g(h(i))
    g, h = perms[1], perms[3]
    gh = g[h]
    lhs = act(gh.unsqueeze(0), x)[0]
    rhs = act(g.unsqueeze(0), act(h.unsqueeze(0), x)[0])[0]
    assert torch.equal(lhs, rhs)


def test_group_inputs_agree() -> None:
    from_sympy = as_permutations(CyclicGroup(6))
    shifts = torch.stack([torch.arange(6).roll(s) for s in range(6)])
    from_tensor = as_permutations(shifts[torch.randperm(6)])
    assert torch.equal(from_sympy, from_tensor)
    assert torch.equal(from_sympy[0], torch.arange(6))
    assert fixed_space_dim(from_sympy) == 1
    assert fixed_space_dim(parse_group("grid-rot:8")) == 16
    assert parse_group("grid-shift:8").shape == (64, 64)
    assert parse_group("symmetric:4").shape == (24, 4)


def test_bad_groups_are_refused(tmp_path) -> None:
    with pytest.raises(MetasymError, match="not closed"):
        as_permutations(torch.tensor([[0, 1, 2], [1, 0, 2], [0, 2, 1]]))
    with pytest.raises(MetasymError, match="not a permutation"):
        as_permutations(torch.tensor([[0, 1, 2], [0, 0, 2]]))
    with pytest.raises(MetasymError, match="unknown group"):
        parse_group("cyclc:6")
    with pytest.raises(MetasymError, match="d=5"):
        as_permutations(CyclicGroup(6), d=5)
    bad = tmp_path / "symmetry.json"
    bad.write_text(json.dumps({"order": 3}))
    with pytest.raises(MetasymError, match="generators"):
        parse_group(str(bad))


def test_group_from_json_generators(tmp_path) -> None:
    path = tmp_path / "symmetry.json"
    path.write_text(json.dumps({"generators": [[1, 2, 3, 4, 5, 0]], "order": 6}))
    assert torch.equal(parse_group(str(path)), parse_group("cyclic:6"))


def test_averaged_kernel_and_predictor() -> None:
    torch.manual_seed(0)
    perms = parse_group("dihedral:6")
    x, y = torch.randn(7, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    kbar = averaged_kernel(_rbf2, perms, x, y)
    for gx in act(perms, x):
        torch.testing.assert_close(averaged_kernel(_rbf2, perms, gx, y), kbar)
    for gy in act(perms, y):
        torch.testing.assert_close(averaged_kernel(_rbf2, perms, x, gy), kbar)

    labels = torch.randn(5, dtype=torch.float64)
    alpha = krr_fit(_rbf2, y, labels, ridge=0.3)
    averaged = krr_predict(_rbf2, y, alpha, x, perms)
    by_hand = torch.stack([krr_predict(_rbf2, y, alpha, gx) for gx in act(perms, x)]).mean(0)
    torch.testing.assert_close(averaged, by_hand)


def test_krr_gap_positive_and_matches_closed_form() -> None:
    # C_6 on R^6, x ~ N(0, I), RBF width 2, f* = Σ sin x_i + 0.5 Σ x_i x_{i+1}, σ = 0.5,
    # n = 60, ρ = 1; 200 noise draws for one training set X.
    gen = torch.Generator().manual_seed(0)
    perms = parse_group("cyclic:6")
    x_train = torch.randn(60, 6, generator=gen, dtype=torch.float64)
    x_test = torch.randn(2000, 6, generator=gen, dtype=torch.float64)
    sim = simulate_gap(_rbf2, perms, x_train, cyclic_target, 0.5, 1.0, x_test, 200, gen)
    closed = expected_gap(_rbf2, perms, x_train, cyclic_target, 0.5, 1.0, x_test)

    assert sim.gap.shape == (200,)
    assert bool((sim.gap > 0).all())
    assert closed.bias > 0 and closed.variance > 0
    assert abs(float(sim.gap.mean()) / closed.total - 1) < 0.03


def test_closed_form_needs_invariant_target() -> None:
    perms = parse_group("cyclic:4")
    x = torch.randn(10, 4, dtype=torch.float64)
    with pytest.raises(MetasymError, match="G-invariant"):
        expected_gap(_rbf2, perms, x, lambda z: z[..., 0], 0.5, 1.0, x)


def test_linear_least_squares_gap() -> None:
    # d = 6, n = 30, σ = 1, G = C_6 so dim Fix G = 1: σ² (d − 1) / (n − d − 1) = 5 / 23.
    perms = parse_group("cyclic:6")
    expected = linear_gap_closed_form(6, fixed_space_dim(perms), 30, 1.0)
    assert expected == pytest.approx(5 / 23)
    gen = torch.Generator().manual_seed(0)
    gaps = simulate_linear_gap(perms, 30, 1.0, 60_000, gen)
    assert bool((gaps >= 0).all())
    assert abs(float(gaps.mean()) / expected - 1) < 0.03


def test_command_runs(capsys) -> None:
    main(["--group", "cyclic:4", "--n", "20", "--trials", "3", "--draws", "4", "--test", "50"])
    out = capsys.readouterr().out
    assert "saving R(f) - R(Of)" in out and "closed form" in out
