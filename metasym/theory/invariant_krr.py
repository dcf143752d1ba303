"""Strict benefit of invariance in kernel ridge regression (Elesedy, arXiv 2106.02346).

A finite group ``G`` acts on ``R^d`` by permuting coordinates. Permutations are stored as a
long tensor ``perms`` of shape ``(g, d)`` in array form, ``perms[a, i] = σ_a(i)``, and act by

    (g·x)_j = x_{σ^{-1}(j)},   i.e.  (g·x)_{σ(i)} = x_i,

so that coordinate ``i`` of ``x`` is moved to position ``σ(i)``. With this convention
``(gh)·x = g·(h·x)`` where ``(gh)(i) = g(h(i))``.

For a kernel that is invariant under the simultaneous action, ``k(g x, g y) = k(x, y)`` (an RBF
kernel under permutations is), Haar averaging ``O f(x) = mean_g f(g x)`` of the kernel ridge
regression (KRR) predictor ``f̂ = k(·, X) A Y`` with ``A = (K + ρ I)^{-1}`` gives
``O f̂ = k̄(·, X) A Y`` where ``k̄(x, y) = mean_g k(x, g y)``, and the two predictors differ by
``k⊥(·, X) A Y`` with ``k⊥ = k − k̄``. If the target ``f*`` and the input law ``μ`` are
``G``-invariant, ``O`` is the orthogonal projection of ``L2(μ)`` onto invariant functions, so

    R(f̂) − R(O f̂) = ||f̂ − O f̂||²_{L2(μ)} = ||k⊥(·, X) A Y||²_{L2(μ)}  ≥ 0

for every training set, and over the label noise ``Y = f*(X) + ξ``, ``ξ ~ N(0, σ² I)``:

    E_ξ[R(f̂) − R(O f̂) | X] = ||k⊥(·, X) A f*(X)||²_{L2(μ)} + σ² tr(A Φ A),
    Φ_ij = E_{x~μ} k⊥(x_i, x) k⊥(x, x_j).

Expectations over ``x ~ μ`` are taken over a Monte Carlo sample made exactly ``G``-invariant by
replacing each base point with its whole orbit (see :func:`orbit_kernel`), so the identities above
hold exactly for that empirical measure.

The module also holds the linear least-squares case (Elesedy and Zaidi, arXiv 2102.10333): with
``x ~ N(0, I_d)``, ``n > d + 1`` and an invariant linear target, averaging the least-squares
estimator over ``G`` lowers the expected test risk by ``σ² (d − dim Fix G) / (n − d − 1)``.

Run ``python -m metasym.theory.invariant_krr --help`` for the command that measures the saving.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import torch
from sympy.combinatorics import Permutation, PermutationGroup
from sympy.combinatorics.named_groups import CyclicGroup, DihedralGroup, SymmetricGroup
from torch import Tensor

from metasym.errors import MetasymError

__all__ = [
    "GroupLike",
    "Kernel",
    "Target",
    "GapTerms",
    "GapSimulation",
    "as_permutations",
    "parse_group",
    "act",
    "fixed_space_dim",
    "rbf_kernel",
    "averaged_kernel",
    "orthogonal_kernel",
    "krr_fit",
    "krr_predict",
    "orbit_kernel",
    "expected_gap",
    "simulate_gap",
    "linear_gap_closed_form",
    "simulate_linear_gap",
    "cyclic_target",
    "mean_interval",
    "main",
]

logger = logging.getLogger(__name__)

GroupLike: TypeAlias = PermutationGroup | Tensor | Sequence[Sequence[int]]
"""A finite permutation group: a sympy group on ``d`` points or all its elements ``(g, d)``."""

Kernel: TypeAlias = Callable[[Tensor, Tensor], Tensor]
"""A kernel ``k(x (n, d), y (m, d)) -> (n, m)``, invariant under simultaneous permutations."""

Target: TypeAlias = Callable[[Tensor], Tensor]
"""A target function ``f*(x (..., d)) -> (...)``."""

_MAX_CLOSURE_CHECK = 5_000


# --- groups -------------------------------------------------------------------------------------


def as_permutations(group: GroupLike, d: int | None = None) -> Tensor:
    """Return all elements of a finite permutation group as an array-form tensor.

    Args:
        group: A ``sympy`` ``PermutationGroup`` on ``d`` points, or all of its elements as a
            ``(g, d)`` tensor or nested list (``row[i] = σ(i)``). Rows are checked to be
            permutations forming a group (closure is checked when ``g ≤ 5000``).
        d: The number of points acted on; checked when given.

    Returns:
        A long tensor of the group's elements, identity first, duplicates removed.

    Shape:
        ``(g, d)``.
    """
    if isinstance(group, PermutationGroup):
        rows = [list(p.array_form) for p in group.generate()]
        size = group.degree
        rows = [r + list(range(len(r), size)) for r in rows]
        perms = torch.tensor(rows, dtype=torch.long)
    else:
        perms = torch.as_tensor(group).to(torch.long)
    if perms.ndim != 2 or perms.shape[0] == 0:
        raise MetasymError(
            f"a group must be a PermutationGroup or a (g, d) tensor of permutations; "
            f"got shape {tuple(perms.shape)}"
        )
    g, dim = perms.shape
    if d is not None and dim != d:
        raise MetasymError(f"the group acts on {dim} points but the data has d={d} coordinates")
    sorted_rows = perms.sort(dim=1).values
    if not torch.equal(sorted_rows, torch.arange(dim).expand(g, dim)):
        bad = int((sorted_rows != torch.arange(dim)).any(dim=1).nonzero()[0])
        raise MetasymError(
            f"row {bad} of the group, {perms[bad].tolist()}, is not a permutation of 0..{dim - 1}"
        )
    perms = torch.unique(perms, dim=0)
    identity = torch.arange(dim)
    is_id = (perms == identity).all(dim=1)
    if not bool(is_id.any()):
        raise MetasymError("the permutations do not include the identity, so they are no group")
    perms = torch.cat([perms[is_id], perms[~is_id]])
    if perms.shape[0] <= _MAX_CLOSURE_CHECK:
        # composed[a, b, i] = σ_a(σ_b(i))
        composed = perms[:, perms].reshape(-1, dim)  # (g*g, d)
        if torch.unique(torch.cat([perms, composed]), dim=0).shape[0] != perms.shape[0]:
            raise MetasymError(
                f"the {perms.shape[0]} permutations are not closed under composition; "
                "pass all elements of a group (or a PermutationGroup)"
            )
    return perms


def _grid_group(side: int, kind: str) -> PermutationGroup:
    """Rotations, dihedral symmetries or torus translations of a ``side × side`` pixel grid."""
    idx = torch.arange(side * side).reshape(side, side)
    rot = torch.rot90(idx, 1).flatten()
    flip = torch.flip(idx, dims=[1]).flatten()
    down = torch.roll(idx, 1, dims=0).flatten()
    right = torch.roll(idx, 1, dims=1).flatten()
    gens = {"grid-rot": [rot], "grid-d4": [rot, flip], "grid-shift": [down, right]}[kind]
    # A generator's image maps pixel p to position q where gens[q] == p; array form is its inverse.
    return PermutationGroup([Permutation(torch.argsort(t).tolist()) for t in gens])


_NAMED = ("cyclic", "dihedral", "symmetric", "trivial", "grid-rot", "grid-d4", "grid-shift")


def parse_group(spec: str) -> Tensor:
    """Build a permutation group from a name or from a JSON file of generators.

    Args:
        spec: ``cyclic:n`` (cyclic shifts of ``n`` points), ``dihedral:n`` (the ``2n`` symmetries
            of an ``n``-gon), ``symmetric:n``, ``trivial:n``, ``grid-rot:s`` (C4 rotations of an
            ``s × s`` grid, ``s²`` points), ``grid-d4:s`` (rotations and flips), ``grid-shift:s``
            (torus translations of rows and columns); or a path to a JSON file with a
            ``generators`` list of permutation arrays, or a ``symmetry.json`` written by
            ``metasym-analyze`` (its layer group's action on the layer's inputs is used).

    Returns:
        All elements of the group, identity first.

    Shape:
        ``(g, d)``.
    """
    path = Path(spec)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise MetasymError(f"group file {spec!r} does not exist")
        data = json.loads(path.read_text())
        layer = data.get("group") if isinstance(data, dict) else None
        if isinstance(layer, dict) and {"n_out", "n_in", "generators"} <= set(layer):
            # a layer group on outputs + inputs: keep its action on the inputs
            n_out = int(layer["n_out"])
            data = {
                "generators": [[p - n_out for p in g[n_out:]] for g in layer["generators"]],
                "degree": int(layer["n_in"]),
            }
        gens = data.get("generators") if isinstance(data, dict) else None
        if not isinstance(gens, list):
            raise MetasymError(f"group file {spec!r} has no 'generators' list of permutations")
        size = data.get("degree") or max((len(g) for g in gens), default=0)
        if size == 0:
            raise MetasymError(f"group file {spec!r} has no generators and no 'degree'")
        perms = [Permutation(list(g), size=size) for g in gens] or [Permutation(size - 1)]
        return as_permutations(PermutationGroup(perms))

    name, _, arg = spec.partition(":")
    if name not in _NAMED or not arg.isdigit() or int(arg) < 1:
        raise MetasymError(
            f"unknown group {spec!r}; use one of {', '.join(n + ':N' for n in _NAMED)} "
            "or a path to a JSON file with a 'generators' list"
        )
    n = int(arg)
    if name == "trivial":
        return torch.arange(n).unsqueeze(0)
    if name.startswith("grid-"):
        return as_permutations(_grid_group(n, name))
    if name == "dihedral" and n < 3:
        raise MetasymError(f"dihedral:{n} needs n >= 3 points")
    maker = {"cyclic": CyclicGroup, "dihedral": DihedralGroup, "symmetric": SymmetricGroup}[name]
    return as_permutations(maker(n))


def act(perms: Tensor, x: Tensor) -> Tensor:
    """Apply every group element to every point: ``out[a, ..., j] = x[..., σ_a^{-1}(j)]``.

    Args:
        perms: Group elements in array form.
        x: Points.

    Returns:
        The transformed points, one slice per group element.

    Shape:
        perms ``(g, d)``, x ``(..., d)`` -> ``(g, ..., d)``.
    """
    inverse = torch.argsort(perms, dim=1)  # (g, d): inverse[a, j] = σ_a^{-1}(j)
    return x[..., inverse].movedim(-2, 0)


def fixed_space_dim(perms: Tensor) -> int:
    """Dimension of the fixed subspace ``Fix G = {x : g x = x}``: the number of orbits on points.

    Shape:
        perms ``(g, d)``.
    """
    # Column i of perms lists the orbit of point i; its minimum names the orbit.
    return int(torch.unique(perms.min(dim=0).values).numel())


# --- kernels and KRR ----------------------------------------------------------------------------


def rbf_kernel(x: Tensor, y: Tensor, width: float) -> Tensor:
    """Gaussian kernel ``k(x, y) = exp(−|x − y|² / (2 w²))``, invariant under permutations.

    Shape:
        x ``(n, d)``, y ``(m, d)`` -> ``(n, m)``.
    """
    if width <= 0:
        raise MetasymError(f"RBF width must be positive, got {width}")
    sq = (x.pow(2).sum(-1, keepdim=True) + y.pow(2).sum(-1) - 2 * x @ y.mT).clamp_min(0)
    return torch.exp(-sq / (2 * width**2))


def averaged_kernel(kernel: Kernel, perms: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Group-averaged kernel ``k̄(x, y) = mean_g k(x, g y)``.

    For a kernel with ``k(g x, g y) = k(x, y)`` this equals ``mean_g k(g x, y)``, so ``k̄`` is
    invariant in each argument and ``O k(·, y) = k̄(·, y)``.

    Shape:
        perms ``(g, d)``, x ``(n, d)``, y ``(m, d)`` -> ``(n, m)``.
    """
    return torch.stack([kernel(x, gy) for gy in act(perms, y)]).mean(0)


def orthogonal_kernel(kernel: Kernel, perms: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Kernel of the non-invariant part, ``k⊥ = k − k̄``.

    Shape:
        perms ``(g, d)``, x ``(n, d)``, y ``(m, d)`` -> ``(n, m)``.
    """
    return kernel(x, y) - averaged_kernel(kernel, perms, x, y)


def krr_fit(kernel: Kernel, x: Tensor, y: Tensor, ridge: float) -> Tensor:
    """Coefficients ``α = (K + ρ I)^{-1} Y`` of kernel ridge regression.

    ``ρ`` is not scaled by ``n``: ``f̂ = k(·, X) α`` minimises
    ``Σ_i (f(x_i) − y_i)² + ρ ||f||²_H``.

    Shape:
        x ``(n, d)``, y ``(n,)`` or ``(n, r)`` -> like y.
    """
    if ridge < 0:
        raise MetasymError(f"ridge must be non-negative, got {ridge}")
    if y.shape[0] != x.shape[0]:
        raise MetasymError(f"{x.shape[0]} inputs but {y.shape[0]} labels")
    gram = kernel(x, x)
    eye = torch.eye(x.shape[0], dtype=gram.dtype)
    return torch.linalg.solve(gram + ridge * eye, y)


def krr_predict(
    kernel: Kernel, x_train: Tensor, alpha: Tensor, x: Tensor, perms: Tensor | None = None
) -> Tensor:
    """Predict with ``f̂(x) = k(x, X) α``, or with its average ``O f̂(x) = k̄(x, X) α``.

    Args:
        kernel: The kernel the coefficients were fitted with.
        x_train: Training inputs ``X``.
        alpha: Coefficients from :func:`krr_fit`.
        x: Points to predict at.
        perms: When given, predict with the group-averaged predictor ``O f̂``.

    Shape:
        x_train ``(n, d)``, alpha ``(n,)`` or ``(n, r)``, x ``(m, d)`` -> ``(m,)`` or ``(m, r)``.
    """
    gram = kernel(x, x_train) if perms is None else averaged_kernel(kernel, perms, x, x_train)
    return gram @ alpha


def orbit_kernel(kernel: Kernel, perms: Tensor, x_test: Tensor, x_train: Tensor) -> Tensor:
    """Kernel between the orbit of every test point and the training inputs.

    ``out[a, t, i] = k(σ_a^{-1}·t, x_i) = k(t, σ_a·x_i)``. The rows over ``(a, t)`` are the
    orbit-closed test sample ``{g t}``, whose empirical measure is exactly ``G``-invariant.
    Averaging over ``a`` gives ``k̄(t, x_i)``, which is the same for every point of the orbit.

    Shape:
        perms ``(g, d)``, x_test ``(m, d)``, x_train ``(n, d)`` -> ``(g, m, n)``.
    """
    return torch.stack([kernel(x_test, gx) for gx in act(perms, x_train)])


# --- the gap ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GapTerms:
    """The closed-form expected gap ``E_ξ[R(f̂) − R(O f̂) | X] = bias + variance``.

    Attributes:
        bias: ``||k⊥(·, X) A f*(X)||²_{L2(μ)}``.
        variance: ``σ² tr(A Φ A)``.
    """

    bias: float
    variance: float

    @property
    def total(self) -> float:
        """The expected gap, ``bias + variance``."""
        return self.bias + self.variance


@dataclass(frozen=True)
class GapSimulation:
    """Test risks of ``f̂`` and ``O f̂`` over noise draws for one training set.

    Attributes:
        risk: ``R(f̂) = E_x (f̂(x) − f*(x))²`` per draw, shape ``(r,)``.
        risk_averaged: ``R(O f̂)`` per draw, shape ``(r,)``.
    """

    risk: Tensor
    risk_averaged: Tensor

    @property
    def gap(self) -> Tensor:
        """``R(f̂) − R(O f̂)`` per draw, shape ``(r,)``."""
        return self.risk - self.risk_averaged


def _check_points(name: str, x: Tensor, d: int) -> None:
    if x.ndim != 2 or x.shape[1] != d:
        raise MetasymError(f"{name} must have shape (n, {d}), got {tuple(x.shape)}")


def _invariant_target_values(target: Target, perms: Tensor, x: Tensor, tol: float) -> Tensor:
    """``f*`` at the orbit of each point, checked to be constant along orbits."""
    values = target(act(perms, x))  # (g, m)
    spread = float((values - values[0]).abs().max())
    scale = float(values.abs().max().clamp_min(1.0))
    if spread > tol * scale:
        raise MetasymError(
            f"the target changes by up to {spread:.3g} along group orbits; the closed form needs "
            "a G-invariant target (average it over the group first)"
        )
    return values[0]


def expected_gap(
    kernel: Kernel,
    perms: Tensor,
    x_train: Tensor,
    target: Target,
    sigma: float,
    ridge: float,
    x_test: Tensor,
    invariance_tol: float = 1e-8,
) -> GapTerms:
    """Closed-form expected gain of averaging KRR over ``G``, given the training inputs.

    Implements (Elesedy, arXiv 2106.02346)

        E_ξ[R(f̂) − R(O f̂) | X] = ||k⊥(·, X) A f*(X)||²_{L2(μ)} + σ² tr(A Φ A),

    with ``A = (K + ρ I)^{-1}``, ``Φ_ij = E_{x~μ} k⊥(x_i, x) k⊥(x, x_j)`` and
    ``R(f) = E_{x~μ} (f(x) − f*(x))²``. Only the label noise ``ξ ~ N(0, σ² I)`` is averaged; the
    result is conditional on ``X``. Assumptions: ``k(g x, g y) = k(x, y)``, ``f*`` is
    ``G``-invariant (checked on the test orbits), ``μ`` is ``G``-invariant (``μ`` is taken to be
    the empirical measure of the orbits of ``x_test``, which is), noise independent of ``x``.

    Args:
        kernel: Kernel invariant under simultaneous permutations.
        perms: Group elements in array form.
        x_train: Training inputs ``X``.
        target: The invariant target ``f*``.
        sigma: Label noise standard deviation.
        ridge: ``ρ`` (not scaled by ``n``).
        x_test: Base points of the Monte Carlo sample of ``μ``; their orbits are used.
        invariance_tol: Relative tolerance for the invariance check of ``f*``.

    Returns:
        The bias and variance terms of the expected gap.

    Shape:
        perms ``(g, d)``, x_train ``(n, d)``, x_test ``(m, d)``.
    """
    d = perms.shape[1]
    _check_points("x_train", x_train, d)
    _check_points("x_test", x_test, d)
    f_train = target(x_train)
    _invariant_target_values(target, perms, x_test, invariance_tol)

    k_orbit = orbit_kernel(kernel, perms, x_test, x_train)  # (g, m, n)
    k_perp = (k_orbit - k_orbit.mean(0)).reshape(-1, x_train.shape[0])  # (g*m, n)
    gram = kernel(x_train, x_train)
    a = torch.linalg.inv(gram + ridge * torch.eye(x_train.shape[0], dtype=gram.dtype))

    bias = (k_perp @ (a @ f_train)).pow(2).mean()
    phi = k_perp.mT @ k_perp / k_perp.shape[0]  # (n, n)
    variance = sigma**2 * torch.trace(a @ phi @ a)
    return GapTerms(bias=float(bias), variance=float(variance))


def simulate_gap(
    kernel: Kernel,
    perms: Tensor,
    x_train: Tensor,
    target: Target,
    sigma: float,
    ridge: float,
    x_test: Tensor,
    draws: int,
    generator: torch.Generator,
) -> GapSimulation:
    """Test risks of KRR and of its group average over fresh label-noise draws.

    For each draw ``Y = f*(X) + ξ``, fits ``f̂`` and measures ``R(f̂)`` and ``R(O f̂)`` on the
    orbit-closed test sample (no invariance of ``f*`` assumed here). Draws come in antithetic
    pairs ``(ξ, −ξ)``: each is a genuine ``N(0, σ² I)`` draw, and the pairing cancels the
    bias-noise cross term of the mean.

    Args:
        kernel: Kernel invariant under simultaneous permutations.
        perms: Group elements in array form.
        x_train: Training inputs ``X``.
        target: The target ``f*``.
        sigma: Label noise standard deviation.
        ridge: ``ρ`` (not scaled by ``n``).
        x_test: Base points of the Monte Carlo sample of ``μ``; their orbits are used.
        draws: Number of noise draws ``r``.
        generator: Seeded source of the noise.

    Returns:
        Per-draw risks of ``f̂`` and ``O f̂``.

    Shape:
        perms ``(g, d)``, x_train ``(n, d)``, x_test ``(m, d)``; risks ``(r,)``.
    """
    d = perms.shape[1]
    _check_points("x_train", x_train, d)
    _check_points("x_test", x_test, d)
    if draws < 1:
        raise MetasymError(f"draws must be at least 1, got {draws}")
    n = x_train.shape[0]
    dtype = x_train.dtype

    half = (draws + 1) // 2
    xi = torch.randn(n, half, generator=generator, dtype=dtype) * sigma
    noise = torch.cat([xi, -xi], dim=1)[:, :draws]  # (n, r)
    labels = target(x_train).unsqueeze(1) + noise
    alpha = krr_fit(kernel, x_train, labels, ridge)  # (n, r)

    k_orbit = orbit_kernel(kernel, perms, x_test, x_train)  # (g, m, n)
    # Row (a, t) of k_orbit is the kernel at σ_a^{-1}·t, so the target must be read there too.
    inverse = torch.argsort(perms, dim=1)
    f_test = target(act(inverse, x_test))  # (g, m)
    pred = k_orbit @ alpha  # (g, m, r)
    pred_avg = (k_orbit.mean(0) @ alpha).unsqueeze(0)  # (1, m, r)
    risk = (pred - f_test.unsqueeze(-1)).pow(2).mean(dim=(0, 1))
    risk_avg = (pred_avg - f_test.unsqueeze(-1)).pow(2).mean(dim=(0, 1))
    return GapSimulation(risk=risk, risk_averaged=risk_avg)


# --- the linear least-squares case --------------------------------------------------------------


def linear_gap_closed_form(d: int, dim_fix: int, n: int, sigma: float) -> float:
    """Expected gain of averaging least squares over ``G``: ``σ² (d − dim Fix G) / (n − d − 1)``.

    Holds for ``x ~ N(0, I_d)``, a linear target ``f*(x) = β*ᵀ x`` with ``β* ∈ Fix G``, labels with
    ``N(0, σ²)`` noise, the unregularised estimator ``β̂ = (XᵀX)^{-1} XᵀY`` and its average
    ``P β̂`` (``P`` the orthogonal projection onto ``Fix G``); the expectation is over ``X`` and
    the noise (Elesedy and Zaidi, arXiv 2102.10333; ``E (XᵀX)^{-1} = I / (n − d − 1)``).
    """
    if n <= d + 1:
        raise MetasymError(f"the closed form needs n > d + 1; got n={n}, d={d}")
    if not 0 <= dim_fix <= d:
        raise MetasymError(f"dim Fix G must lie in [0, {d}], got {dim_fix}")
    return sigma**2 * (d - dim_fix) / (n - d - 1)


def simulate_linear_gap(
    perms: Tensor,
    n: int,
    sigma: float,
    draws: int,
    generator: torch.Generator,
    chunk: int = 20_000,
) -> Tensor:
    """Simulated ``R(β̂) − R(P β̂)`` for least squares on ``x ~ N(0, I_d)``, per draw of ``(X, ξ)``.

    The gap does not depend on the invariant ``β*`` (it cancels), and with ``E x xᵀ = I`` the
    risk difference is exactly ``|(I − P) β̂|² = |(I − P)(XᵀX)^{-1} Xᵀ ξ|²``, ``P = mean_g P_g``.

    Args:
        perms: Group elements in array form.
        n: Training set size (``n > d``).
        sigma: Label noise standard deviation.
        draws: Number of independent training sets ``r``.
        generator: Seeded source of ``X`` and ``ξ``.
        chunk: Draws handled at once, to bound memory.

    Returns:
        The per-draw gap, float64.

    Shape:
        perms ``(g, d)`` -> ``(r,)``.
    """
    g, d = perms.shape
    if n <= d:
        raise MetasymError(f"least squares needs n > d; got n={n}, d={d}")
    eye = torch.eye(d, dtype=torch.float64)
    # P_g e_i = e_{σ(i)}, so the projection onto Fix G is the mean of these matrices.
    proj = eye[:, perms].movedim(1, 0).mean(0).mT  # (d, d)
    out = []
    for start in range(0, draws, chunk):
        r = min(chunk, draws - start)
        x = torch.randn(r, n, d, generator=generator, dtype=torch.float64)
        xi = torch.randn(r, n, 1, generator=generator, dtype=torch.float64) * sigma
        beta = torch.linalg.solve(x.mT @ x, x.mT @ xi).squeeze(-1)  # (r, d)
        out.append((beta - beta @ proj.mT).pow(2).sum(-1))
    return torch.cat(out)


# --- helpers for the command --------------------------------------------------------------------


def cyclic_target(x: Tensor) -> Tensor:
    """``h(x) = Σ_i sin x_i + 0.5 Σ_i x_i x_{i+1}`` with indices mod ``d``.

    Invariant under cyclic shifts and reflections of the coordinates.

    Shape:
        x ``(..., d)`` -> ``(...)``.
    """
    return x.sin().sum(-1) + 0.5 * (x * x.roll(-1, dims=-1)).sum(-1)


def mean_interval(values: Tensor, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and normal-approximation confidence interval of the mean.

    Shape:
        values ``(r,)``.
    """
    if values.numel() < 2:
        raise MetasymError(f"an interval needs at least 2 values, got {values.numel()}")
    z = math.sqrt(2) * float(torch.erfinv(torch.tensor(level, dtype=torch.float64)))
    mean = float(values.mean())
    half = z * float(values.std()) / math.sqrt(values.numel())
    return mean, mean - half, mean + half


def _group_average(target: Target, perms: Tensor) -> Target:
    def averaged(x: Tensor) -> Tensor:
        return target(act(perms, x)).mean(0)

    return averaged


def _digits(generator: torch.Generator) -> Tensor:
    from sklearn.datasets import load_digits

    images = torch.as_tensor(load_digits().data, dtype=torch.float64) / 8.0  # (1797, 64)
    return images[torch.randperm(images.shape[0], generator=generator)]


def main(argv: list[str] | None = None) -> None:
    """Measure how much test error averaging KRR over a group saves, against the closed form."""
    from tqdm import tqdm

    parser = argparse.ArgumentParser(
        prog="python -m metasym.theory.invariant_krr",
        description="Test risk of kernel ridge regression with and without averaging over a "
        "permutation group (Elesedy, arXiv 2106.02346).",
    )
    parser.add_argument(
        "--group",
        default="cyclic:6",
        help="e.g. cyclic:6, dihedral:6, "
        "symmetric:4, grid-rot:8, grid-d4:8, grid-shift:8, or symmetry.json",
    )
    parser.add_argument("--data", choices=["gaussian", "digits"], default="gaussian")
    parser.add_argument("--n", type=int, default=60, help="training set size")
    parser.add_argument("--sigma", type=float, default=0.5, help="label noise std")
    parser.add_argument("--ridge", type=float, default=1.0, help="ρ in (K + ρ I)^-1")
    parser.add_argument(
        "--width",
        type=float,
        default=None,
        help="RBF width (default: 2 for gaussian, median distance for digits)",
    )
    parser.add_argument("--trials", type=int, default=30, help="training sets drawn")
    parser.add_argument("--draws", type=int, default=20, help="noise draws per training set")
    parser.add_argument("--test", type=int, default=1000, help="test base points (orbit-closed)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    gen = torch.Generator().manual_seed(args.seed)
    perms = parse_group(args.group)
    g, d = perms.shape

    # The input law μ: N(0, I_d), or digits (pixels / 8) moved by a uniformly random g; both are
    # G-invariant. The target is h averaged over G, hence G-invariant.
    if args.data == "digits":
        if d != 64:
            raise MetasymError(f"digits have 64 pixels but group {args.group!r} acts on {d}")
        pool = _digits(gen)

        def sample(m: int) -> Tensor:
            idx = torch.randint(pool.shape[0], (m,), generator=gen)
            moves = torch.randint(g, (m,), generator=gen)
            return act(perms, pool[idx])[moves, torch.arange(m)]

        width = args.width or float(torch.pdist(pool[:300]).median())
    else:

        def sample(m: int) -> Tensor:
            return torch.randn(m, d, generator=gen, dtype=torch.float64)

        width = args.width or 2.0
    target = _group_average(cyclic_target, perms)

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        return rbf_kernel(a, b, width)

    x_test = sample(args.test)
    risks, risks_avg, closed = [], [], []
    for _ in tqdm(range(args.trials), desc=f"KRR under {args.group}"):
        x_train = sample(args.n)
        sim = simulate_gap(
            kernel, perms, x_train, target, args.sigma, args.ridge, x_test, args.draws, gen
        )
        risks.append(sim.risk.mean())
        risks_avg.append(sim.risk_averaged.mean())
        closed.append(
            expected_gap(kernel, perms, x_train, target, args.sigma, args.ridge, x_test).total
        )
    risk, risk_avg = torch.stack(risks), torch.stack(risks_avg)
    rows = {
        "R(f) without averaging": risk,
        "R(Of) with averaging": risk_avg,
        "saving R(f) - R(Of)": risk - risk_avg,
        "closed form E[saving | X]": torch.tensor(closed),
    }
    print(
        f"group {args.group} (order {g}, d={d}, dim Fix G={fixed_space_dim(perms)}), "
        f"data {args.data}, n={args.n}, sigma={args.sigma}, ridge={args.ridge}, "
        f"width={width:.3g}, {args.trials} training sets x {args.draws} noise draws"
    )
    print("excess test risk E_x (f(x) - f*(x))^2, mean [95% interval over training sets]")
    for name, values in rows.items():
        mean, lo, hi = mean_interval(values)
        print(f"  {name:<28} {mean:.5f}  [{lo:.5f}, {hi:.5f}]")
    print(f"  saving positive in {int((risk > risk_avg).sum())}/{args.trials} training sets")


if __name__ == "__main__":
    main()
