"""Closed-form inner loop: a ridge regression of the fast parameters on each task's support set.

MSR's layer ``W = reshape(U v)`` (arXiv 2007.02933) is linear in its filter ``v``: for inputs ``x``
the outputs are ``(x ⊗ U) v``. More generally, for any model whose output is affine in its fast
parameters ``phi`` (``SharedLinear``, ``Dense``, ``Conv``, ``LocallyConnected1d``, with or without
fast biases)

    f(phi) = f(phi_0) + J (phi - phi_0),        J = d f / d phi    (m x p, m = n * o outputs),

so one support set's inner problem can be solved exactly instead of by SGD steps:

    phi* = argmin_phi  L(phi) + 1/2 (phi - phi_0)^T A^{-1} (phi - phi_0),
    L(phi) = (1/m) ||f(phi) - y||^2                         (the inner loop's mean squared error)

with ``A = diag(|alpha|)``, each entry the learned inner learning rate ``alpha`` of its fast
tensor (``lrs``). This is the proximal-point (implicit gradient) step of size ``alpha`` from the
meta-learned initial ``phi_0``: for small ``alpha`` it equals the ``sgd`` solver's single step
``phi_0 - A grad L(phi_0)`` up to ``O(alpha^2)``; for large ``alpha`` it tends to least squares
(in the under-determined case, the solution nearest ``phi_0``). Regularising toward ``phi_0``
rather than 0 keeps the meta-learned initialisation meaningful, as in MAML. The rates are learned
by the outer loop when ``learn_inner_lr`` is set and stay at ``inner_lr`` (a fixed ridge
``lambda = 1 / (2 inner_lr)``) otherwise. With ``r_0 = y - f(phi_0)``, ``c = m / 2`` and
``delta = phi* - phi_0``, setting the gradient to zero gives

    primal (p <= m):   (A J^T J + c I) delta = A J^T r_0                  (a p x p system)
    dual   (p >  m):   delta = A J^T (J A J^T + c I)^{-1} r_0             (an m x m system)

which agree by the push-through identity; the smaller system is solved. Everything is
differentiable (the meta-gradient flows through ``J``, which depends on ``U``, and through the
solve) and runs per task inside ``torch.func.vmap``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacfwd, jacrev

from metasym.errors import MetasymError
from metasym.meta.inner import LOSSES, LossFn, Params

__all__ = ["check_affine", "ridge_adapt", "ridge_solve"]

_AFFINE_TOLERANCE = 1e3
"""Allowed affinity defect, in units of the dtype's machine epsilon times the output's size."""


def ridge_solve(jac: torch.Tensor, residual: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
    """The step ``delta`` minimising ``(1/m) ||J delta - r||^2 + 1/2 delta^T A^{-1} delta``.

    Solves ``(A J^T J + (m/2) I) delta = A J^T r`` with ``A = diag(rates)`` (primal, when
    ``p <= m``) or ``delta = A J^T (J A J^T + (m/2) I)^{-1} r`` (dual, when ``p > m``). A zero rate
    freezes its entry (``delta = 0`` there); rates must be non-negative.

    Args:
        jac: the Jacobian ``J`` of the outputs with respect to the parameters.
        residual: ``r = y - f(phi_0)``, flattened.
        rates: per-parameter inner learning rates (the diagonal of ``A``).

    Returns:
        ``delta``, the change of the parameters.

    Shape:
        jac: ``(m, p)``; residual: ``(m,)``; rates: ``(p,)``; returns ``(p,)``.
    """
    m, p = jac.shape
    if residual.shape != (m,) or rates.shape != (p,):
        raise MetasymError(
            f"ridge_solve needs jac (m, p), residual (m,), rates (p,); got {tuple(jac.shape)}, "
            f"{tuple(residual.shape)}, {tuple(rates.shape)}"
        )
    c = m / 2
    if p <= m:
        gram = jac.T @ jac  # (p, p)
        system = rates[:, None] * gram + c * torch.eye(p, dtype=jac.dtype, device=jac.device)
        return torch.linalg.solve(system, rates * (jac.T @ residual))
    kernel = (jac * rates) @ jac.T  # (m, m)
    system = kernel + c * torch.eye(m, dtype=jac.dtype, device=jac.device)
    return rates * (jac.T @ torch.linalg.solve(system, residual))


def _probe(shape: torch.Size, like: torch.Tensor, phase: float) -> torch.Tensor:
    # deterministic pseudo-random values: random ops are refused inside vmap
    numel = math.prod(shape)
    index = torch.arange(numel, dtype=like.dtype, device=like.device)
    return torch.sin(index * 12.9898 + phase).mul(43.758).frac().mul(2).sub(1).view(shape)


def check_affine(model: nn.Module, fast: Params, meta: Params, x: torch.Tensor) -> None:
    """Refuse a model whose output is not affine in its fast parameters.

    Evaluates ``f(a + b) - f(a) - f(b) + f(0)`` at fixed probe points ``a``, ``b`` of the fast
    parameters and a probe input of ``x``'s shape; for an affine map it is zero up to rounding.

    Raises:
        MetasymError: the defect exceeds the rounding tolerance.

    Shape:
        x: ``(n, i)`` (only its shape and dtype are used).
    """
    with torch.no_grad():
        meta_d = {name: t.detach() for name, t in meta.items()}
        x_probe = _probe(x.shape, x, 0.5)

        def f(shift: float, scale_a: float, scale_b: float) -> torch.Tensor:
            params = {
                name: scale_a * _probe(t.shape, t, 1.0 + j)
                + scale_b * _probe(t.shape, t, 2.0 + j)
                + shift
                for j, (name, t) in enumerate(fast.items())
            }
            return functional_call(model, {**meta_d, **params}, (x_probe,))

        ab, a, b, zero = f(0.0, 1.0, 1.0), f(0.0, 1.0, 0.0), f(0.0, 0.0, 1.0), f(0.0, 0.0, 0.0)
        defect = (ab - a - b + zero).norm().item()
        size = sum(t.norm().item() for t in (ab, a, b, zero))
    eps = torch.finfo(ab.dtype).eps if ab.is_floating_point() else 0.0
    if not defect <= _AFFINE_TOLERANCE * eps * max(size, 1e-30) + 1e-30:
        raise MetasymError(
            f"inner solver 'ridge' needs a model whose output is affine in its fast parameters "
            f"{list(fast)}; {type(model).__name__} is not (f(a+b) - f(a) - f(b) + f(0) has norm "
            f"{defect:.3g} against output norms {size:.3g}). Use inner solver 'sgd'."
        )


def ridge_adapt(
    model: nn.Module,
    fast: Params,
    meta: Params,
    lrs: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn = F.mse_loss,
) -> Params:
    """Adapt one task's fast parameters in closed form (the proximal ridge step of the module doc).

    Args:
        model: the module whose parameters ``fast`` and ``meta`` replace (by name); its output
            must be affine in the fast parameters (checked numerically).
        fast: initial fast parameters ``phi_0`` (the ridge pulls toward them).
        meta: meta parameters (held fixed).
        lrs: one inner learning rate per fast tensor, in the order of ``fast``; ``|alpha|`` is the
            diagonal of ``A`` (ridge strength ``1 / (2 |alpha|)`` on the mean squared error).
        x: support inputs.
        y: support targets.
        loss_fn: must be the mean squared error (``LOSSES["mse"]``): the solve is least squares.

    Returns:
        The adapted fast parameters, keyed like ``fast``.

    Shape:
        x: ``(n, i)``; y: ``(n, o)``; lrs: ``(len(fast),)``.
    """
    if loss_fn is not F.mse_loss:
        name = next((k for k, fn in LOSSES.items() if fn is loss_fn), repr(loss_fn))
        raise MetasymError(
            f"inner solver 'ridge' solves a squared loss; got loss {name!r}. Use loss 'mse', or "
            "inner solver 'sgd' for other losses"
        )
    if lrs.shape != (len(fast),):
        raise MetasymError(
            f"lrs has shape {tuple(lrs.shape)}; expected ({len(fast)},), one per fast tensor"
        )
    check_affine(model, fast, meta, x)

    names = list(fast)
    shapes = [fast[n].shape for n in names]
    sizes = [fast[n].numel() for n in names]

    def outputs(phi: torch.Tensor) -> torch.Tensor:
        parts = phi.split(sizes)
        params = {n: t.view(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        return functional_call(model, {**meta, **params}, (x,)).reshape(-1)  # (m,)

    phi0 = torch.cat([fast[n].reshape(-1) for n in names])  # (p,)
    residual = y.reshape(-1) - outputs(phi0)  # (m,)
    m, p = residual.shape[0], phi0.shape[0]
    # forward mode costs p products with J, reverse mode m: take the cheaper one
    jac = (jacfwd if p <= m else jacrev)(outputs)(phi0)  # (m, p)
    rates = torch.cat([lrs[j].abs().expand(size) for j, size in enumerate(sizes)])  # (p,)
    delta = ridge_solve(jac, residual, rates.to(jac.dtype))
    phi = phi0 + delta
    return {n: t.view(s) for n, t, s in zip(names, phi.split(sizes), shapes, strict=True)}
