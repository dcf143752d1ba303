import math

import pytest
import torch

from metasym.errors import MetasymError
from metasym.theory.invariant_krr import parse_group
from metasym.theory.sample_cover import (
    covering_bound,
    estimate_covering_number,
    exact_cover,
    greedy_cover,
    is_cover,
    kmedoids_cover,
    main,
    packing_lower_bound,
    prototype_orbits,
    transformation_pseudometric,
)


def _assert_triangle(dist: torch.Tensor, tol: float = 1e-9) -> None:
    for j in range(dist.shape[0]):
        through_j = dist[:, j : j + 1] + dist[j : j + 1, :]  # (n, n)
        assert bool((dist <= through_j + tol).all())


@pytest.fixture(scope="module")
def prototypes() -> torch.Tensor:
    # 5 prototypes in R^16, all 16 cyclic shifts of each, 3 noisy copies (std 0.05) of each.
    x, _ = prototype_orbits(torch.Generator().manual_seed(0))
    assert x.shape == (240, 16)
    return x


@pytest.mark.parametrize(("spec", "expected"), [("cyclic:16", 5), ("trivial:16", 80)])
def test_covering_number_of_prototype_orbits(prototypes, spec, expected) -> None:
    dist = transformation_pseudometric(prototypes, parse_group(spec))
    gen = torch.Generator().manual_seed(1)
    for eps in (0.5, 1.0, 1.5, 2.0):
        est = estimate_covering_number(dist, eps, gen)
        # The packing lower bound meets both covers, so the covering number is exact.
        assert (est.lower, est.greedy, est.kmedoids) == (expected, expected, expected)
        assert est.exact


def test_pseudometric_below_distance_and_triangle(prototypes) -> None:
    plain = torch.cdist(prototypes, prototypes, compute_mode="donot_use_mm_for_euclid_dist")
    dist = transformation_pseudometric(prototypes, parse_group("cyclic:16"))
    assert bool((dist <= plain + 1e-12).all())
    assert torch.equal(dist, dist.mT) and bool((dist.diagonal() == 0).all())
    _assert_triangle(dist)


def test_non_group_transformations_are_closed_under_chains() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(30, 6, generator=gen, dtype=torch.float64)
    shifts = torch.stack([torch.arange(6).roll(s) for s in (0, 1)])  # identity and one shift
    raw = transformation_pseudometric(x, shifts, closure=False)
    closed = transformation_pseudometric(x, shifts)
    assert bool((closed <= raw + 1e-12).all())
    _assert_triangle(closed)
    # For a group the chain closure changes nothing: the distance is already a pseudometric.
    group = parse_group("cyclic:6")
    torch.testing.assert_close(
        transformation_pseudometric(x, group, closure=False), transformation_pseudometric(x, group)
    )


@pytest.mark.parametrize("seed", range(8))
def test_estimates_are_valid_covers_never_below_the_minimum(seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(13, 4, generator=gen, dtype=torch.float64)
    transforms = parse_group("cyclic:4") if seed % 2 else torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]])
    dist = transformation_pseudometric(x, transforms)
    eps = float(torch.quantile(dist[dist > 0], 0.15 + 0.05 * seed))
    exact = exact_cover(dist, eps)
    assert is_cover(dist, exact, eps)
    assert packing_lower_bound(dist, eps) <= exact.numel()
    for cover in (greedy_cover(dist, eps), kmedoids_cover(dist, eps, gen)):
        assert is_cover(dist, cover, eps)
        assert cover.numel() >= exact.numel()


def test_exact_cover_refuses_large_sets() -> None:
    with pytest.raises(MetasymError, match="limited to 20 points"):
        exact_cover(torch.zeros(21, 21), 1.0)


def test_covering_bound_formula() -> None:
    value = covering_bound(5, 240, 0.5, lipschitz=2.0, loss_bound=3.0, delta=0.1)
    expected = 2 * 2.0 * 0.5 + 3.0 * math.sqrt((10 * math.log(2) + 2 * math.log(10)) / 240)
    assert value == pytest.approx(expected)
    assert covering_bound(5, 240, 0.5) < covering_bound(80, 240, 0.5)
    with pytest.raises(MetasymError, match="delta"):
        covering_bound(5, 240, 0.5, delta=1.5)


def test_command_runs(capsys) -> None:
    main(["--data", "prototypes", "--eps", "1"])
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in out[2:]}
    assert rows["cyclic:16"][3:6] == ["5", "5", "5"]
    assert rows["trivial:16"][3:6] == ["80", "80", "80"]
