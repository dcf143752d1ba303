"""Sample covers induced by transformations (Zhu, An and Huang, arXiv 2111.05529).

A set ``T`` of coordinate permutations (a group, or any set of them; array form and action as in
:mod:`metasym.theory.invariant_krr`: ``(g·x)_{σ(i)} = x_i``) induces on a data set the distance

    d_T(x, y) = min_{g, h ∈ T} |g x − h y|,

which for a group of isometries is ``min_g |x − g y|`` and already a pseudometric. For a general
set it may break the triangle inequality, so it is closed under chains,
``d̂(x, y) = min over paths x = z_0, ..., z_k = y of Σ d_T(z_{l−1}, z_l)`` (a shortest-path pass),
the largest pseudometric on the data below ``d_T``. An ε-sample cover is a subset ``S`` of the
data with every point within ``ε`` of ``S`` under ``d̂``; its smallest size is the sample covering
number ``N(ε, T)``. Fewer points are needed when the data is close to a union of ``T``-orbits, which
is when a ``T``-invariant model generalises from fewer examples.

Estimates of ``N(ε, T)``: a greedy set cover (an upper bound), a k-medoids-style minimax search
(an upper bound, often tighter), a packing lower bound, and a brute-force minimum for small sets.

Run ``python -m metasym.theory.sample_cover --help`` for the command that compares groups.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.csgraph import shortest_path
from torch import Tensor

from metasym.errors import MetasymError
from metasym.theory.invariant_krr import GroupLike, act, as_permutations, parse_group

__all__ = [
    "CoverEstimate",
    "transformation_pseudometric",
    "is_cover",
    "greedy_cover",
    "kmedoids_cover",
    "exact_cover",
    "packing_lower_bound",
    "estimate_covering_number",
    "covering_bound",
    "prototype_orbits",
    "main",
]

logger = logging.getLogger(__name__)


def _as_transforms(transforms: GroupLike, d: int) -> tuple[Tensor, bool]:
    """Array-form permutations and whether they form a group."""
    try:
        return as_permutations(transforms, d), True
    except MetasymError as err:
        if "not closed" not in str(err) and "identity" not in str(err):
            raise
    perms = torch.unique(torch.as_tensor(transforms).to(torch.long), dim=0)
    return perms, False


def transformation_pseudometric(x: Tensor, transforms: GroupLike, closure: bool = True) -> Tensor:
    """Pairwise transformation-induced distances ``d_T`` on a data set, closed under chains.

    ``d_T(x, y) = min_{g, h ∈ T} |g x − h y|``; when ``T`` is a group this is computed as
    ``min_g |x − g y|`` (equal, since permutations are isometries). With ``closure`` the result
    is replaced by shortest-path distances over the complete graph weighted by ``d_T``, so it
    satisfies the triangle inequality even when ``T`` is not a group (Zhu et al., arXiv
    2111.05529). The result never exceeds ``|x − y|`` when ``T`` contains the identity.

    Args:
        x: Data points.
        transforms: A permutation group (sympy or all its elements) or any set of permutations.
        closure: Close under chains (Floyd–Warshall via ``scipy.sparse.csgraph``).

    Returns:
        Symmetric distances with a zero diagonal, float64.

    Shape:
        x ``(n, d)`` -> ``(n, n)``.
    """
    if x.ndim != 2:
        raise MetasymError(f"data must have shape (n, d), got {tuple(x.shape)}")
    perms, is_group = _as_transforms(transforms, x.shape[1])
    x = x.to(torch.float64)
    moved = act(perms, x)  # (t, n, d)

    def exact_cdist(a: Tensor, b: Tensor) -> Tensor:
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")

    if is_group:
        dist = torch.stack([exact_cdist(x, gy) for gy in moved]).amin(0)
    else:
        dist = torch.stack([exact_cdist(gx, hy) for gx in moved for hy in moved]).amin(0)
    dist = torch.minimum(dist, dist.mT)  # exact symmetry despite rounding
    dist.fill_diagonal_(0.0)
    if closure:
        dist = torch.from_numpy(shortest_path(dist.numpy(), method="FW", directed=False))
    return dist


def _check_dist(dist: Tensor, eps: float) -> np.ndarray:
    if dist.ndim != 2 or dist.shape[0] != dist.shape[1]:
        raise MetasymError(f"distances must be a square (n, n) matrix, got {tuple(dist.shape)}")
    if not eps >= 0:
        raise MetasymError(f"eps must be non-negative, got {eps}")
    return dist.detach().cpu().numpy().astype(np.float64)


def is_cover(dist: Tensor, centers: Tensor, eps: float) -> bool:
    """Whether every point lies within ``eps`` of some center.

    Shape:
        dist ``(n, n)``, centers ``(k,)`` indices.
    """
    d = _check_dist(dist, eps)
    if centers.numel() == 0:
        return d.shape[0] == 0
    return bool((d[:, centers.numpy()].min(axis=1) <= eps).all())


def greedy_cover(dist: Tensor, eps: float) -> Tensor:
    """Greedy ε-sample cover: repeatedly take the point whose ε-ball holds most uncovered points.

    A valid cover whose size is at most ``(1 + ln n)`` times the minimum.

    Shape:
        dist ``(n, n)`` -> ``(k,)`` indices.
    """
    near = _check_dist(dist, eps) <= eps  # (n, n): near[c, p] when c covers p
    uncovered = np.ones(near.shape[0], dtype=bool)
    centers: list[int] = []
    while uncovered.any():
        best = int((near & uncovered).sum(axis=1).argmax())
        centers.append(best)
        uncovered &= ~near[best]
    return torch.tensor(centers, dtype=torch.long)


def packing_lower_bound(dist: Tensor, eps: float) -> int:
    """A lower bound on the ε-sample covering number from a greedy 2ε-packing.

    Points pairwise farther apart than ``2ε`` need distinct centers (a center within ``ε`` of two
    points puts them within ``2ε`` of each other), so any such set's size bounds ``N(ε)``.

    Shape:
        dist ``(n, n)``.
    """
    d = _check_dist(dist, eps)
    close = d <= 2 * eps
    # Pick points with few close neighbours first: that tends to give larger packings.
    order = np.argsort(close.sum(axis=1), kind="stable")
    free = np.ones(d.shape[0], dtype=bool)
    size = 0
    for p in order:
        if free[p]:
            size += 1
            free &= ~close[p]
    return size


def _minimax_medoids(d: np.ndarray, k: int, rng: np.random.Generator, iters: int) -> np.ndarray:
    """k centers by farthest-point seeding then alternating assignment and minimax medoids."""
    n = d.shape[0]
    centers = [int(rng.integers(n))]
    for _ in range(k - 1):
        centers.append(int(d[:, centers].min(axis=1).argmax()))
    medoids = np.array(centers)
    for _ in range(iters):
        owner = d[:, medoids].argmin(axis=1)
        new = medoids.copy()
        for c in range(k):
            members = np.flatnonzero(owner == c)
            if members.size:
                new[c] = members[d[np.ix_(members, members)].max(axis=1).argmin()]
        if np.array_equal(np.sort(new), np.sort(medoids)):
            break
        medoids = new
    return medoids


def kmedoids_cover(
    dist: Tensor, eps: float, generator: torch.Generator, restarts: int = 5, iters: int = 20
) -> Tensor:
    """Smallest ε-sample cover found by a k-medoids-style minimax search.

    Starting below the greedy cover's size and going down while it succeeds (never below the
    packing lower bound), runs ``restarts`` times a k-medoids loop that minimises the largest
    distance to a medoid (assign to the nearest medoid, move each medoid to the member with the
    smallest largest distance within its cluster) and keeps the smallest set of medoids that
    covers at radius ``ε``. Starts from the greedy cover, so the result is a valid cover never
    larger than :func:`greedy_cover`'s.

    Shape:
        dist ``(n, n)`` -> ``(k,)`` indices.
    """
    if restarts < 1:
        raise MetasymError(f"restarts must be at least 1, got {restarts}")
    d = _check_dist(dist, eps)
    best = greedy_cover(dist, eps).sort().values
    lower = packing_lower_bound(dist, eps)
    rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator)))
    k = best.numel() - 1
    while k >= max(lower, 1):
        found = None
        for _ in range(restarts):
            medoids = _minimax_medoids(d, k, rng, iters)
            if (d[:, medoids].min(axis=1) <= eps).all():
                found = medoids
                break
        if found is None:
            break
        best = torch.from_numpy(np.sort(found)).to(torch.long)
        k -= 1
    return best


def exact_cover(dist: Tensor, eps: float, max_points: int = 20) -> Tensor:
    """A minimum ε-sample cover by brute force over subsets of increasing size.

    Exponential in ``n``; refused above ``max_points`` points.

    Shape:
        dist ``(n, n)`` -> ``(k,)`` indices.
    """
    d = _check_dist(dist, eps)
    n = d.shape[0]
    if n > max_points:
        raise MetasymError(
            f"brute force is limited to {max_points} points, got n={n}; "
            "use greedy_cover or kmedoids_cover"
        )
    # Bit p of masks[c] is set when center c covers point p.
    masks = [sum(1 << int(p) for p in np.flatnonzero(row <= eps)) for row in d]
    full = (1 << n) - 1
    upper = greedy_cover(dist, eps)
    for k in range(packing_lower_bound(dist, eps), upper.numel()):
        for combo in itertools.combinations(range(n), k):
            covered = 0
            for c in combo:
                covered |= masks[c]
            if covered == full:
                return torch.tensor(combo, dtype=torch.long)
    return upper.sort().values


@dataclass(frozen=True)
class CoverEstimate:
    """Estimates of the ε-sample covering number of one data set under one set of transforms.

    Attributes:
        eps: The radius ``ε``.
        lower: Packing lower bound.
        greedy: Size of the greedy cover.
        kmedoids: Size of the k-medoids-style cover.
    """

    eps: float
    lower: int
    greedy: int
    kmedoids: int

    @property
    def best(self) -> int:
        """The smallest cover found (an upper bound on ``N(ε)``)."""
        return min(self.greedy, self.kmedoids)

    @property
    def exact(self) -> bool:
        """Whether the bounds meet, so ``best`` is the covering number."""
        return self.lower == self.best


def estimate_covering_number(
    dist: Tensor, eps: float, generator: torch.Generator, restarts: int = 5
) -> CoverEstimate:
    """Bracket the ε-sample covering number: packing bound ≤ ``N(ε)`` ≤ the covers found.

    Shape:
        dist ``(n, n)``.
    """
    return CoverEstimate(
        eps=eps,
        lower=packing_lower_bound(dist, eps),
        greedy=greedy_cover(dist, eps).numel(),
        kmedoids=kmedoids_cover(dist, eps, generator, restarts).numel(),
    )


def covering_bound(
    covering_number: int,
    n: int,
    eps: float,
    lipschitz: float = 1.0,
    loss_bound: float = 1.0,
    delta: float = 0.05,
) -> float:
    """Generalisation bound of an invariant model from a covering number.

    Implements the robustness bound (Xu and Mannor, arXiv 1005.2243, Theorem 3)

        R(h) − R̂_n(h) ≤ 2 L ε + M sqrt((2 K ln 2 + 2 ln(1/δ)) / n)   with probability ≥ 1 − δ,

    for a loss in ``[0, M]`` that is ``L``-Lipschitz in the input, ``K`` cells of radius ``ε``
    (diameter ``2ε``). For a ``T``-invariant model the loss is constant along ``T``-orbits, so
    cells may be balls of ``d̂`` and ``K`` the ε-sample covering number: this is the shape of
    the refined bounds of Zhu et al. (arXiv 2111.05529), whose exact constants are not
    reproduced here. Using the covering number of the training set for the partition of the
    input space is itself an approximation (as in that paper's experiments).

    Args:
        covering_number: ``K``; labelled data needs a cover per class (sum them).
        n: Training set size.
        eps: Cell radius ``ε``.
        lipschitz: ``L``.
        loss_bound: ``M``.
        delta: Failure probability ``δ``.

    Returns:
        The bound on the generalisation gap.
    """
    if covering_number < 1 or n < 1:
        raise MetasymError(f"need covering_number >= 1 and n >= 1, got {covering_number}, {n}")
    if not 0 < delta < 1:
        raise MetasymError(f"delta must lie in (0, 1), got {delta}")
    slack = math.sqrt((2 * covering_number * math.log(2) + 2 * math.log(1 / delta)) / n)
    return 2 * lipschitz * eps + loss_bound * slack


def prototype_orbits(
    generator: torch.Generator,
    prototypes: int = 5,
    d: int = 16,
    copies: int = 3,
    noise: float = 0.05,
    scale: float = 2.0,
) -> tuple[Tensor, Tensor]:
    """Noisy copies of every cyclic shift of a few random prototypes.

    Each prototype ``p ~ N(0, scale² I_d)`` is shifted by all ``d`` cyclic shifts and each shifted
    point gets ``copies`` copies with ``N(0, noise² I_d)`` noise.

    Returns:
        The points and, per point, the index of its prototype.

    Shape:
        ``(prototypes * d * copies, d)`` and ``(prototypes * d * copies,)``.
    """
    base = torch.randn(prototypes, d, generator=generator, dtype=torch.float64) * scale
    shifts = torch.stack([base.roll(s, dims=1) for s in range(d)], dim=1)  # (p, d, d)
    points = shifts.unsqueeze(2).expand(-1, -1, copies, -1)  # (p, d, copies, d)
    points = points + noise * torch.randn(points.shape, generator=generator, dtype=torch.float64)
    labels = torch.arange(prototypes).repeat_interleave(d * copies)
    return points.reshape(-1, d), labels


def _digits(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    idx = torch.randperm(len(digits.target), generator=generator)[:n]
    x = torch.as_tensor(digits.data, dtype=torch.float64)[idx]
    return x, torch.as_tensor(digits.target)[idx]


def main(argv: list[str] | None = None) -> None:
    """Compare ε-sample covering numbers of a data set under several candidate groups."""
    from tqdm import tqdm

    parser = argparse.ArgumentParser(
        prog="python -m metasym.theory.sample_cover",
        description="Sample covering numbers under candidate groups (Zhu et al., 2111.05529).",
    )
    parser.add_argument("--data", choices=["digits", "prototypes"], default="digits")
    parser.add_argument("--n", type=int, default=300, help="digits subset size")
    parser.add_argument(
        "--eps",
        default=None,
        help="comma-separated radii (default: 6,8,10 for digits, 0.5,1,2 for prototypes)",
    )
    parser.add_argument(
        "--groups",
        default=None,
        help="comma-separated group names (default: trivial, torus shifts, C4, D4 for digits)",
    )
    parser.add_argument(
        "--group-json",
        action="append",
        default=[],
        help="a symmetry.json with a 'generators' list; may repeat",
    )
    parser.add_argument(
        "--per-class",
        action="store_true",
        help="cover each label separately and add up (labelled bound)",
    )
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--delta", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    gen = torch.Generator().manual_seed(args.seed)
    if args.data == "digits":
        x, y = _digits(args.n, gen)
        x = x / 16.0 * 4.0  # pixels in [0, 4]
        default_eps, default_groups = "6,8,10", "trivial:64,grid-shift:8,grid-rot:8,grid-d4:8"
    else:
        x, y = prototype_orbits(gen)
        default_eps, default_groups = "0.5,1,2", "trivial:16,cyclic:16"
    radii = [float(e) for e in (args.eps or default_eps).split(",")]
    specs = (args.groups or default_groups).split(",") + list(args.group_json)
    classes = torch.unique(y) if args.per_class else torch.zeros(1, dtype=y.dtype)
    parts = [y == c for c in classes] if args.per_class else [torch.ones_like(y, dtype=torch.bool)]

    results: list[tuple[str, int, CoverEstimate]] = []
    for spec in tqdm(specs, desc="groups"):
        perms = parse_group(spec)
        dists = [transformation_pseudometric(x[mask], perms) for mask in parts]
        for eps in radii:
            found = [estimate_covering_number(dd, eps, gen, args.restarts) for dd in dists]
            total = CoverEstimate(
                eps=eps,
                lower=sum(f.lower for f in found),
                greedy=sum(f.greedy for f in found),
                kmedoids=sum(f.kmedoids for f in found),
            )
            results.append((spec, perms.shape[0], total))

    print(
        f"data {args.data}, n={x.shape[0]}, per class: {args.per_class}; covering number "
        f"bracket [lower, best]; bound = 2 L eps + M sqrt((2 N ln 2 + 2 ln(1/{args.delta})) / n) "
        "with L = M = 1 and N the best cover (slack = the square-root term)"
    )
    header = ("group", "|G|", "eps", "lower", "greedy", "kmedoids", "slack", "bound")
    print(f"{header[0]:<24}" + "".join(f"{h:>9}" for h in header[1:]))
    for spec, order, est in results:
        bound = covering_bound(est.best, x.shape[0], est.eps, delta=args.delta)
        slack = bound - 2 * est.eps
        print(
            f"{spec:<24}{order:>9}{est.eps:>9.3g}{est.lower:>9}{est.greedy:>9}"
            f"{est.kmedoids:>9}{slack:>9.3f}{bound:>9.3f}"
        )


if __name__ == "__main__":
    main()
