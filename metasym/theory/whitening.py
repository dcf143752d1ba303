"""Invariance from batch statistics: ZCA batch whitening (Ye et al., arXiv 2103.16634).

Whitening a batch with its own mean and covariance removes every invertible affine map of the
inputs up to an orthogonal rotation. For a batch ``X`` (rows ``x_n``) with mean ``mu`` and
covariance ``S``, ZCA whitening is

    z_n = S^{-1/2} (x_n - mu).

If the inputs are replaced by ``x -> A x + b`` (``A`` invertible), then ``mu -> A mu + b``,
``S -> A S A^T`` and ``z_n -> R z_n`` with ``R = (A S A^T)^{-1/2} A S^{1/2}``, and ``R R^T = I``.
A learner that is equivariant to rotations of its inputs (gradient descent from zero on a
logistic loss is) therefore makes the same predictions whatever ``A`` and ``b`` were: the
invariance to the affine group is built in by the batch statistics, not learned.

Two caveats, both exact statements rather than approximations:

- ``eps > 0`` replaces ``S`` by ``S + eps I``, which does not transform as ``A S A^T``; the
  invariance then holds only up to ``O(eps / lambda_min(S))``. Use ``eps=0`` to test it.
- The optional per-sample scale normalisation (``sample_norm=True``) divides each sample by its
  root-mean-square before whitening. It makes the output invariant to positive rescalings of
  individual samples, ``x_n -> s_n x_n``, but it breaks affine invariance, because the norm of
  ``A x + b`` is not a function of the norm of ``x``.

The inverse square root is computed either exactly (``method="eig"``) or by the Newton-Schulz
iteration (``method="newton_schulz"``), which uses only matrix products and, after normalising
``S`` by its trace, converges for any positive definite ``S``; its accuracy for a fixed iteration
count degrades as the condition number of ``S`` grows (see :func:`newton_schulz_error_table`).

Run ``python -m metasym.theory.whitening --out DIR`` for the demonstration.
"""

from __future__ import annotations

import argparse
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from metasym.errors import MetasymError

__all__ = [
    "BatchWhitening",
    "WhiteningMethod",
    "affine_invariance_gap",
    "batch_standardize",
    "batch_whiten",
    "inverse_sqrt",
    "logistic_regression_gd",
    "main",
    "newton_schulz_error_table",
    "newton_schulz_inverse_sqrt",
]

logger = logging.getLogger(__name__)

WhiteningMethod = Literal["eig", "newton_schulz"]
_METHODS: tuple[str, ...] = ("eig", "newton_schulz")


def _check_method(method: str) -> None:
    if method not in _METHODS:
        raise MetasymError(f"method={method!r} is not known; valid methods are {list(_METHODS)}")


def _check_square_spd(cov: Tensor) -> None:
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise MetasymError(
            f"expected a square covariance matrix of shape (c, c), got shape {tuple(cov.shape)}"
        )


def newton_schulz_inverse_sqrt(cov: Tensor, iters: int = 10) -> Tensor:
    """Inverse square root of a symmetric positive definite matrix by Newton-Schulz iteration.

    With the trace normalisation ``S_N = S / tr(S)`` (all eigenvalues of ``S_N`` lie in (0, 1]),
    the coupled iteration

        Y_0 = S_N,  Z_0 = I,  T_t = (3 I - Z_t Y_t) / 2,  Y_{t+1} = Y_t T_t,  Z_{t+1} = T_t Z_t

    has ``Y_t -> S_N^{1/2}`` and ``Z_t -> S_N^{-1/2}``, and ``S^{-1/2} = Z_T / sqrt(tr(S))``
    (arXiv 2103.16634 whitens with matrix products only in this way). The coupled form is used
    because the one-matrix form ``P <- (3 P - P^3 S_N) / 2`` amplifies rounding errors and
    diverges when run for many iterations. An eigenvalue ``l`` of ``S_N`` is resolved once
    ``Z_t^2 l`` is near 1; until then it grows by a factor 3/2 per step, so small eigenvalues
    (large condition numbers) need about ``log_{1.5}(l^{-1/2})`` extra iterations.

    Args:
        cov: symmetric positive definite matrix.
        iters: number of iterations ``T`` (``T = 0`` returns ``I / sqrt(tr(S))``).

    Returns:
        The approximation ``Z_T / sqrt(tr(S))`` of ``S^{-1/2}``.

    Shape:
        cov: ``(c, c)``; returns ``(c, c)``.
    """
    _check_square_spd(cov)
    if iters < 0:
        raise MetasymError(f"iters={iters} must be a non-negative integer")
    trace = torch.diagonal(cov).sum()
    if not bool(trace > 0):
        raise MetasymError(
            f"covariance has trace {float(trace):.3g}; Newton-Schulz needs a positive definite "
            "matrix (add eps > 0 or use a batch with more rows than features)"
        )
    cov_n = cov / trace
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    y, z = cov_n, eye
    for _ in range(iters):
        t = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ t, t @ z
    return z / trace.sqrt()


def _eig_inverse_sqrt(cov: Tensor) -> Tensor:
    evals, evecs = torch.linalg.eigh(cov)
    floor = torch.finfo(cov.dtype).eps * evals.abs().max().clamp_min(1.0)
    if bool((evals <= floor).any()):
        warnings.warn(
            f"covariance has smallest eigenvalue {float(evals.min()):.3g} <= {float(floor):.3g}; "
            "its inverse square root is clamped and whitening is not exact. Use eps > 0 or a "
            "batch with more (independent) rows than features.",
            RuntimeWarning,
            stacklevel=3,
        )
        evals = evals.clamp_min(floor)
    return (evecs * evals.rsqrt()) @ evecs.T


def inverse_sqrt(cov: Tensor, method: WhiteningMethod = "eig", ns_iters: int = 10) -> Tensor:
    """Inverse square root ``S^{-1/2}`` of a covariance matrix.

    ``method="eig"`` uses ``S = V diag(l) V^T``, ``S^{-1/2} = V diag(l^{-1/2}) V^T`` (exact, and
    warns when ``S`` is singular); ``method="newton_schulz"`` calls
    :func:`newton_schulz_inverse_sqrt` with ``ns_iters`` iterations.

    Args:
        cov: symmetric positive (semi)definite matrix.
        method: ``"eig"`` or ``"newton_schulz"``.
        ns_iters: Newton-Schulz iteration count (ignored for ``"eig"``).

    Returns:
        ``S^{-1/2}``.

    Shape:
        cov: ``(c, c)``; returns ``(c, c)``.
    """
    _check_method(method)
    _check_square_spd(cov)
    if method == "eig":
        return _eig_inverse_sqrt(cov)
    return newton_schulz_inverse_sqrt(cov, ns_iters)


def _to_rows(x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """Flatten ``(n, c)`` or ``(n, c, h, w)`` to rows ``(m, c)``; channels are the features."""
    if x.ndim == 2:
        return x, tuple(x.shape)
    if x.ndim == 4:
        n, c, h, w = x.shape
        return x.permute(0, 2, 3, 1).reshape(n * h * w, c), (n, c, h, w)  # (n*h*w, c)
    raise MetasymError(
        f"expected inputs of shape (n, c) or (n, c, h, w), got shape {tuple(x.shape)}"
    )


def _from_rows(rows: Tensor, shape: tuple[int, ...]) -> Tensor:
    if len(shape) == 2:
        return rows
    n, c, h, w = shape
    return rows.reshape(n, h, w, c).permute(0, 3, 1, 2)  # (n, c, h, w)


def _sample_normalize(x: Tensor) -> Tensor:
    """Divide each sample by its root-mean-square over all non-batch entries."""
    dims = tuple(range(1, x.ndim))
    rms = x.pow(2).mean(dim=dims, keepdim=True).sqrt()
    return x / rms.clamp_min(torch.finfo(x.dtype).tiny)


def _batch_moments(rows: Tensor) -> tuple[Tensor, Tensor]:
    m = rows.shape[0]
    if m < 2:
        raise MetasymError(f"batch statistics need at least 2 rows, got {m}")
    mean = rows.mean(dim=0)
    centred = rows - mean
    cov = centred.T @ centred / m  # (c, c), biased so the whitened batch has identity covariance
    return mean, cov


def batch_whiten(
    x: Tensor,
    *,
    method: WhiteningMethod = "eig",
    ns_iters: int = 10,
    eps: float = 1e-5,
    sample_norm: bool = False,
) -> Tensor:
    """ZCA-whiten a batch with its own statistics (function form of :class:`BatchWhitening`).

    Computes ``z = (S + eps I)^{-1/2} (x - mu)`` with ``mu`` and ``S`` the batch mean and biased
    covariance of the feature (channel) dimension (arXiv 2103.16634). For images the statistics
    run over ``n, h, w``. With ``eps=0`` and ``sample_norm=False`` the output changes only by an
    orthogonal rotation under any invertible affine map of the features.

    Args:
        x: a batch of inputs for a linear layer or a conv layer.
        method: ``"eig"`` (exact) or ``"newton_schulz"``.
        ns_iters: Newton-Schulz iteration count.
        eps: added to the covariance diagonal (``eps >= 0``).
        sample_norm: first divide each sample by its root-mean-square (scale invariance per
            sample; breaks affine invariance).

    Returns:
        The whitened batch, same shape as ``x``.

    Shape:
        x: ``(n, c)`` or ``(n, c, h, w)``; returns the same shape.
    """
    _check_method(method)
    if eps < 0:
        raise MetasymError(f"eps={eps} must be >= 0")
    if sample_norm:
        x = _sample_normalize(x)
    rows, shape = _to_rows(x)
    mean, cov = _batch_moments(rows)
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    wmat = inverse_sqrt(cov + eps * eye, method, ns_iters)
    return _from_rows((rows - mean) @ wmat, shape)


def batch_standardize(x: Tensor, eps: float = 0.0) -> Tensor:
    """Per-feature standardisation ``(x - mu) / sigma`` with batch statistics (the baseline).

    It removes per-feature shifts and scales (a diagonal affine map) but not a mixing ``A``.

    Args:
        x: a batch of rows.
        eps: added to the per-feature variance.

    Returns:
        The standardised batch.

    Shape:
        x: ``(n, c)``; returns ``(n, c)``.
    """
    if x.ndim != 2:
        raise MetasymError(f"expected inputs of shape (n, c), got shape {tuple(x.shape)}")
    mean, var = x.mean(dim=0), x.var(dim=0, unbiased=False)
    return (x - mean) / (var + eps).sqrt()


class BatchWhitening(nn.Module):
    """ZCA batch whitening with running statistics for evaluation (arXiv 2103.16634).

    In training mode the layer whitens with the batch mean ``mu`` and covariance ``S`` of the
    channel dimension, ``z = (S + eps I)^{-1/2} (x - mu)``, and updates the running estimates
    ``r <- (1 - momentum) r + momentum * batch``. In evaluation mode it uses the running
    estimates. Placed before a linear layer it takes ``(n, c)``; before a conv layer it takes
    ``(n, c, h, w)`` and whitens channels with statistics over ``n, h, w``.

    Args:
        num_features: the number of features / channels ``c``.
        method: ``"eig"`` (exact eigendecomposition) or ``"newton_schulz"``.
        ns_iters: Newton-Schulz iteration count (with trace normalisation).
        eps: added to the covariance diagonal; 0 gives exact affine invariance.
        momentum: weight of the current batch in the running statistics, in ``(0, 1]``
            (``1`` keeps the last training batch's statistics).
        sample_norm: divide each sample by its root-mean-square first (scale invariance per
            sample; breaks affine invariance).

    Shape:
        input: ``(n, c)`` or ``(n, c, h, w)``; output: the same shape.
    """

    running_mean: Tensor
    running_cov: Tensor

    def __init__(
        self,
        num_features: int,
        *,
        method: WhiteningMethod = "eig",
        ns_iters: int = 10,
        eps: float = 1e-5,
        momentum: float = 0.1,
        sample_norm: bool = False,
    ) -> None:
        super().__init__()
        _check_method(method)
        if num_features < 1:
            raise MetasymError(f"num_features={num_features} must be a positive integer")
        if eps < 0:
            raise MetasymError(f"eps={eps} must be >= 0")
        if not 0.0 < momentum <= 1.0:
            raise MetasymError(f"momentum={momentum} must lie in (0, 1]")
        if ns_iters < 0:
            raise MetasymError(f"ns_iters={ns_iters} must be a non-negative integer")
        self.num_features = num_features
        self.method: WhiteningMethod = method
        self.ns_iters = ns_iters
        self.eps = eps
        self.momentum = momentum
        self.sample_norm = sample_norm
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_cov", torch.eye(num_features))

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, method={self.method!r}, ns_iters={self.ns_iters}, "
            f"eps={self.eps}, momentum={self.momentum}, sample_norm={self.sample_norm}"
        )

    def forward(self, x: Tensor) -> Tensor:
        """Whiten ``x`` with batch statistics (training) or running statistics (evaluation)."""
        if x.ndim not in (2, 4) or x.shape[1] != self.num_features:
            raise MetasymError(
                f"expected (n, {self.num_features}) or (n, {self.num_features}, h, w) inputs, "
                f"got shape {tuple(x.shape)}"
            )
        if self.sample_norm:
            x = _sample_normalize(x)
        rows, shape = _to_rows(x)
        if self.training:
            mean, cov = _batch_moments(rows)
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean.detach().to(self.running_mean))
                self.running_cov.mul_(1 - m).add_(m * cov.detach().to(self.running_cov))
        else:
            mean, cov = self.running_mean.to(rows), self.running_cov.to(rows)
        eye = torch.eye(self.num_features, dtype=cov.dtype, device=cov.device)
        wmat = inverse_sqrt(cov + self.eps * eye, self.method, self.ns_iters)
        return _from_rows((rows - mean) @ wmat, shape)


def logistic_regression_gd(
    z: Tensor, y: Tensor, *, steps: int = 500, lr: float = 1.0, x_eval: Tensor | None = None
) -> Tensor:
    """Full-batch gradient descent on the logistic loss from zero, returning predicted logits.

    Minimises ``mean_n log(1 + exp(-s_n (w . z_n + b)))`` with ``s_n = 2 y_n - 1`` from
    ``w = 0, b = 0``. Every iterate has ``w`` in the row space of ``Z`` and the updates commute
    with rotations ``z -> R z``, which is why whitened inputs give affine-invariant predictions.

    Args:
        z: training inputs.
        y: labels in ``{0, 1}``.
        steps: gradient steps.
        lr: step size.
        x_eval: inputs to predict on; defaults to ``z``.

    Returns:
        The logits ``w . x + b`` on ``x_eval``.

    Shape:
        z: ``(n, i)``; y: ``(n,)``; x_eval: ``(m, i)``; returns ``(n,)`` or ``(m,)``.
    """
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise MetasymError(
            f"expected z of shape (n, i) and y of shape (n,), got {tuple(z.shape)} and "
            f"{tuple(y.shape)}"
        )
    n = z.shape[0]
    w = torch.zeros(z.shape[1], dtype=z.dtype, device=z.device)
    b = torch.zeros((), dtype=z.dtype, device=z.device)
    for _ in range(steps):
        resid = torch.sigmoid(z @ w + b) - y  # (n,)
        w = w - lr * (z.T @ resid) / n
        b = b - lr * resid.mean()
    x_eval = z if x_eval is None else x_eval
    return x_eval @ w + b


def _random_spd(dim: int, cond: float, gen: torch.Generator) -> Tensor:
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    evals = torch.logspace(0.0, -math.log10(cond), dim, dtype=torch.float64)
    return (q * evals) @ q.T


def newton_schulz_error_table(
    cond_numbers: Sequence[float],
    iterations: Sequence[int],
    *,
    dim: int = 16,
    seed: int = 0,
) -> Tensor:
    """Relative Frobenius error of Newton-Schulz ``S^{-1/2}`` against the exact eigen solution.

    For each condition number ``k`` a random symmetric positive definite ``S`` of size ``dim``
    with log-spaced eigenvalues from 1 to ``1/k`` is drawn, and for each iteration count ``T``
    the error ``|Z_T / sqrt(tr S) - S^{-1/2}|_F / |S^{-1/2}|_F`` is reported (float64).

    Args:
        cond_numbers: condition numbers of the test matrices (each >= 1).
        iterations: Newton-Schulz iteration counts.
        dim: matrix size.
        seed: seed of the generator drawing the eigenvectors.

    Returns:
        The error table, one row per condition number and one column per iteration count.

    Shape:
        returns ``(len(cond_numbers), len(iterations))``.
    """
    if any(k < 1 for k in cond_numbers):
        raise MetasymError(f"condition numbers must be >= 1, got {list(cond_numbers)}")
    gen = torch.Generator().manual_seed(seed)
    table = torch.empty(len(cond_numbers), len(iterations), dtype=torch.float64)
    for r, cond in enumerate(cond_numbers):
        cov = _random_spd(dim, float(cond), gen)
        exact = _eig_inverse_sqrt(cov)
        for c, iters in enumerate(iterations):
            approx = newton_schulz_inverse_sqrt(cov, int(iters))
            table[r, c] = torch.linalg.norm(approx - exact) / torch.linalg.norm(exact)
    return table


def affine_invariance_gap(
    *,
    dim: int = 8,
    n: int = 256,
    steps: int = 500,
    lr: float = 1.0,
    n_maps: int = 5,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Largest change of logistic-regression predictions under random affine maps of the inputs.

    Draws a synthetic binary problem (``n`` points in ``dim`` dimensions, labels from a noisy
    linear rule), then for ``n_maps`` random well-conditioned ``A`` (singular values in
    [0.5, 2]) and shifts ``b`` trains :func:`logistic_regression_gd` on each preprocessing of
    ``A x + b`` and compares the logits with those obtained on ``x``. Whitening uses ``eps=0``.

    Args:
        dim: input dimension.
        n: number of samples.
        steps: gradient descent steps.
        lr: step size.
        n_maps: number of random affine maps.
        seed: seed of the data and of the maps.

    Returns:
        ``{"whiten": gaps, "standardize": gaps}``, the max absolute logit difference per map.

    Shape:
        each value: ``(n_maps,)``.
    """
    gen = torch.Generator().manual_seed(seed)
    x, y = _synthetic_binary(n, dim, gen)
    preprocess = {
        "whiten": lambda t: batch_whiten(t, eps=0.0),
        "standardize": batch_standardize,
    }
    reference = {
        k: logistic_regression_gd(f(x), y, steps=steps, lr=lr) for k, f in preprocess.items()
    }
    gaps = {k: torch.empty(n_maps, dtype=torch.float64) for k in preprocess}
    for j in range(n_maps):
        a, b = _random_affine(dim, gen)
        xt = x @ a.T + b
        for k, f in preprocess.items():
            logits = logistic_regression_gd(f(xt), y, steps=steps, lr=lr)
            gaps[k][j] = (logits - reference[k]).abs().max()
    return gaps


def _synthetic_binary(n: int, dim: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    # Correlated, shifted features so that whitening and standardisation differ.
    mix = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64) @ mix.T + 1.0
    w_true = torch.randn(dim, generator=gen, dtype=torch.float64)
    score = (x - x.mean(0)) @ w_true
    noise = torch.randn(n, generator=gen, dtype=torch.float64) * score.std()
    return x, (score + noise > 0).to(torch.float64)


def _random_affine(dim: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    q1, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    sv = 0.5 + 1.5 * torch.rand(dim, generator=gen, dtype=torch.float64)
    return (q1 * sv) @ q2.T, 3.0 * torch.randn(dim, generator=gen, dtype=torch.float64)


def main(argv: list[str] | None = None) -> None:
    """Print the invariance gaps and the Newton-Schulz error table; plot both to ``--out``."""
    parser = argparse.ArgumentParser(
        prog="python -m metasym.theory.whitening",
        description="Batch whitening: affine invariance and Newton-Schulz accuracy.",
    )
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the figure")
    parser.add_argument("--dim", type=int, default=16, help="matrix size for Newton-Schulz")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gaps = affine_invariance_gap(seed=args.seed)
    print("Logistic regression (d=8, n=256, 500 GD steps, lr 1) after x -> A x + b:")
    print(f"{'preprocessing':>14} | {'max |logit diff|':>16}")
    for k, v in gaps.items():
        print(f"{k:>14} | {float(v.max()):16.3e}")

    conds = [10.0**p for p in range(1, 7)]
    iters = [5, 10, 15, 20, 25, 30]
    table = newton_schulz_error_table(conds, iters, dim=args.dim, seed=args.seed)
    print(f"\nNewton-Schulz relative Frobenius error of S^(-1/2) (dim {args.dim}):")
    print(f"{'cond':>8} | " + " | ".join(f"T={t:<6d}" for t in iters))
    for cond, row in zip(conds, table, strict=True):
        print(f"{cond:8.0e} | " + " | ".join(f"{float(e):8.1e}" for e in row))

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.2))
    for c, t in enumerate(iters):
        ax0.loglog(conds, table[:, c].clamp_min(1e-17).numpy(), "o-", label=f"T = {t}")
    ax0.set_xlabel("condition number of S")
    ax0.set_ylabel("relative Frobenius error of $S^{-1/2}$")
    ax0.set_title(f"Newton-Schulz inverse square root (dim {args.dim})")
    ax0.legend(title="iterations")
    labels = list(gaps)
    ax1.bar(labels, [float(gaps[k].max().clamp_min(1e-17)) for k in labels], color=["C0", "C3"])
    ax1.set_yscale("log")
    ax1.set_ylabel("max |logit difference| over 5 random maps")
    ax1.set_title("Predictions after x -> A x + b (logistic GD)")
    fig.suptitle("Batch whitening (arXiv 2103.16634)")
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "whitening.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
