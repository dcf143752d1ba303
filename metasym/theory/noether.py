"""Noether charges of training dynamics and their breaking (Tanaka and Kunin, arXiv 2105.02716).

A continuous symmetry of a loss ``L`` constrains its gradient. For the three symmetries that
networks commonly have, with ``g = grad L`` and SGD ``w <- w - eta (g + lam w)``:

- scale, ``L(c w) = L(w)`` (a weight before a normalisation): ``g . w = 0``; the charge
  ``Q = |w|^2`` obeys ``Q' = (1 - eta lam)^2 Q + eta^2 |g|^2`` exactly. The effective step size of
  the direction ``w / |w|`` is ``eta / |w|^2``. At equilibrium, with ``grad V(w_hat)`` the gradient
  at the unit-normalised weight (``g = grad V(w_hat) / |w|``), the balance
  ``(2 eta lam - eta^2 lam^2) |w|^4 = eta^2 |grad V(w_hat)|^2`` gives
  ``E |w|^4 ~= eta E |grad V(w_hat)|^2 / (2 lam)`` when ``eta lam`` is small and ``|w|`` varies
  slowly.
- rescale, ``L(c w_in, w_out / c) = L(w_in, w_out)`` (a unit between two layers through a ReLU,
  or a factorisation): ``g_in . w_in = g_out . w_out`` per unit; the charge
  ``Q = |w_in|^2 - |w_out|^2`` obeys ``Q' = (1 - eta lam)^2 Q + eta^2 (|g_in|^2 - |g_out|^2)``.
- translation, ``L(z + c 1) = L(z)`` for softmax logits ``z``: the logit gradient sums to zero
  over classes, so ``Q = 1^T b`` (output biases) and ``1^T W`` (logit-layer weights) obey
  ``Q' = (1 - eta lam) Q``: without weight decay they are conserved exactly.

Under gradient flow (``eta -> 0``, ``lam = 0``) each charge is conserved; a finite step moves the
scale and rescale charges by ``O(eta^2)`` per step ("kinetic symmetry breaking"). An optimiser
that rescales the gradient coordinate by coordinate (Adam, RMSProp) breaks the conservation at
first order, because ``w . D g`` with a diagonal ``D`` no longer vanishes when ``w . g`` does.

The same reasoning applies to metasym's factorisation ``W = reshape(U v)`` (arXiv 2007.02933)
with a learned inner learning rate ``alpha``; see :func:`msr_meta_loss` and :func:`msr_charge`.

Run ``python -m metasym.theory.noether --out DIR`` for the demonstration.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from metasym.errors import MetasymError

__all__ = [
    "AlphaParam",
    "ChargeTracker",
    "Conv1dTaskBatch",
    "RescaleSymmetry",
    "ScaleSymmetry",
    "Symmetry",
    "TranslationSymmetry",
    "effective_learning_rate",
    "equilibrium_norm4",
    "main",
    "msr_charge",
    "msr_meta_loss",
    "msr_symmetry_transform",
    "rescale_charge",
    "run_msr_charge_experiment",
    "sample_conv1d_tasks",
    "scale_charge",
    "scale_invariant_logistic_sgd",
    "translation_charge",
]

logger = logging.getLogger(__name__)

AlphaParam = Literal["linear", "log"]


# --------------------------------------------------------------------------- charges


def scale_charge(w: Tensor, per_row: bool = False) -> Tensor:
    """Charge ``|w|^2`` of the scale symmetry ``w -> c w``.

    Args:
        w: the scale-invariant parameter.
        per_row: each row ``w[o]`` has its own scale symmetry (a normalisation per output unit).

    Returns:
        ``|w|^2``, or ``|w[o]|^2`` per row.

    Shape:
        w: ``(o, ...)``; returns ``(1,)`` or ``(o,)``.
    """
    if per_row:
        return w.reshape(w.shape[0], -1).pow(2).sum(dim=1)
    return w.pow(2).sum().reshape(1)


def rescale_charge(incoming: Sequence[Tensor], outgoing: Sequence[Tensor]) -> Tensor:
    """Charge ``|w_in|^2 - |w_out|^2`` per hidden unit of the rescale symmetry.

    The symmetry multiplies the incoming weights (and bias) of unit ``h`` by ``c`` and divides its
    outgoing weights by ``c``; it holds around a ReLU (positive homogeneity) and in a product
    ``A B``.

    Args:
        incoming: parameters whose dim 0 indexes the units (``(h, i)`` weight, ``(h,)`` bias).
        outgoing: parameters whose dim 1 indexes the units (``(o, h)`` weight).

    Returns:
        One charge per unit.

    Shape:
        returns ``(h,)``.
    """
    q_in = sum(p.reshape(p.shape[0], -1).pow(2).sum(dim=1) for p in incoming)
    q_out = sum(p.transpose(0, 1).reshape(p.shape[1], -1).pow(2).sum(dim=1) for p in outgoing)
    return torch.as_tensor(q_in - q_out)


def translation_charge(params: Sequence[Tensor]) -> Tensor:
    """Charge ``1^T p`` of the softmax translation symmetry, for each logit-layer parameter.

    Adding ``c 1`` to the output bias or ``1 a^T`` to the logit weight shifts every logit of a
    sample equally, which a softmax ignores. The charge is the sum over the class dimension.

    Args:
        params: logit-layer parameters whose dim 0 indexes classes (``(o,)`` bias,
            ``(o, h)`` weight).

    Returns:
        The class sums, concatenated.

    Shape:
        returns ``(sum of numel(p) / o,)``.
    """
    return torch.cat([p.sum(dim=0).reshape(-1) for p in params])


def effective_learning_rate(w: Tensor, lr: float) -> Tensor:
    """Effective step size ``eta / |w|^2`` of the direction of a scale-invariant weight.

    Since ``grad L(w) = grad L(w_hat) / |w|``, a step ``eta`` on ``w`` moves ``w_hat`` by
    ``eta / |w|^2`` times the gradient at ``w_hat`` (to first order), arXiv 2105.02716.

    Shape:
        w: any; returns ``()``.
    """
    return lr / w.pow(2).sum()


def equilibrium_norm4(lr: float, weight_decay: float, grad_unit_sq: float | Tensor) -> float:
    """Predicted equilibrium ``E |w|^4 ~= eta E |grad V(w_hat)|^2 / (2 lam)`` (arXiv 2105.02716).

    From ``|w'|^2 = (1 - eta lam)^2 |w|^2 + eta^2 |grad V(w_hat)|^2 / |w|^2`` at a stationary
    norm, dropping the ``O(eta lam)`` correction ``2 lam -> 2 lam - eta lam^2``.

    Args:
        lr: SGD learning rate ``eta``.
        weight_decay: ``lam > 0``.
        grad_unit_sq: the mean squared (minibatch) gradient at the unit-normalised weight.

    Returns:
        The predicted mean of ``|w|^4``.
    """
    if weight_decay <= 0:
        raise MetasymError(f"weight_decay={weight_decay} must be > 0 for an equilibrium to exist")
    return float(lr * grad_unit_sq / (2.0 * weight_decay))


# --------------------------------------------------------------------------- symmetries


@dataclass(frozen=True)
class ScaleSymmetry:
    """The loss is unchanged by ``param -> c * param`` (``c > 0``), per row if ``per_row``."""

    param: str
    per_row: bool = False

    @property
    def name(self) -> str:
        return f"scale:{self.param}"


@dataclass(frozen=True)
class RescaleSymmetry:
    """Unit ``h``: ``incoming[.][h] -> c * .`` and ``outgoing[.][:, h] -> . / c`` leave it fixed."""

    incoming: tuple[str, ...]
    outgoing: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"rescale:{'+'.join(self.incoming)}|{'+'.join(self.outgoing)}"


@dataclass(frozen=True)
class TranslationSymmetry:
    """Softmax logits: adding a constant over the class dimension (dim 0) of ``params``."""

    params: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"translation:{'+'.join(self.params)}"


Symmetry = ScaleSymmetry | RescaleSymmetry | TranslationSymmetry


def _sq(t: Tensor, rows: bool) -> Tensor:
    return t.reshape(t.shape[0], -1).pow(2).sum(dim=1) if rows else t.pow(2).sum().reshape(1)


class ChargeTracker:
    """Records the Noether charge of each declared symmetry during training (arXiv 2105.02716).

    Call :meth:`record` after ``loss.backward()`` and before ``optimizer.step()`` at every step.
    It appends the current charges to :attr:`history` and, when ``lr`` is given, the charges that
    plain SGD (``torch.optim.SGD`` without momentum, weight decay ``lam``) must produce after the
    step to :attr:`predicted`, so ``predicted[k][t]`` is to be compared with ``history[k][t + 1]``:

    - scale: ``(1 - eta lam)^2 Q + eta^2 |g|^2``;
    - rescale: ``(1 - eta lam)^2 Q + eta^2 (|g_in|^2 - |g_out|^2)`` per unit;
    - translation: ``(1 - eta lam) Q``.

    These predictions hold exactly only if the declared symmetry is a symmetry of the loss and
    the optimiser is plain SGD; with momentum or Adam use the history alone.

    Args:
        model: the module whose named parameters the symmetries refer to.
        symmetries: the declared symmetries.
        lr: the SGD learning rate for predictions (``None``: record charges only).
        weight_decay: the SGD weight decay ``lam`` for predictions.
    """

    def __init__(
        self,
        model: nn.Module,
        symmetries: Sequence[Symmetry],
        *,
        lr: float | None = None,
        weight_decay: float = 0.0,
    ) -> None:
        self._params = dict(model.named_parameters())
        for sym in symmetries:
            for name in self._names(sym):
                if name not in self._params:
                    raise MetasymError(
                        f"symmetry {sym.name!r} names parameter {name!r}; the model has "
                        f"{sorted(self._params)}"
                    )
            if isinstance(sym, RescaleSymmetry):
                sizes = {self._params[n].shape[0] for n in sym.incoming}
                sizes |= {self._params[n].shape[1] for n in sym.outgoing}
                if len(sizes) != 1:
                    raise MetasymError(
                        f"symmetry {sym.name!r}: incoming dim 0 and outgoing dim 1 must agree "
                        f"on the number of units, got sizes {sorted(sizes)}"
                    )
        self.symmetries = list(symmetries)
        self.lr = lr
        self.weight_decay = weight_decay
        self.history: dict[str, list[Tensor]] = {s.name: [] for s in self.symmetries}
        self.predicted: dict[str, list[Tensor]] = {s.name: [] for s in self.symmetries}

    @staticmethod
    def _names(sym: Symmetry) -> tuple[str, ...]:
        if isinstance(sym, ScaleSymmetry):
            return (sym.param,)
        if isinstance(sym, RescaleSymmetry):
            return sym.incoming + sym.outgoing
        return sym.params

    def charges(self) -> dict[str, Tensor]:
        """The current charge of each symmetry (detached, 1-D)."""
        out: dict[str, Tensor] = {}
        with torch.no_grad():
            for sym in self.symmetries:
                out[sym.name] = self._charge(sym, lambda n: self._params[n]).clone()
        return out

    def _charge(self, sym: Symmetry, fetch: Callable[[str], Tensor]) -> Tensor:
        """The charge formula applied to parameters or, for the SGD prediction, to gradients."""
        if isinstance(sym, ScaleSymmetry):
            return _sq(fetch(sym.param), sym.per_row)
        if isinstance(sym, RescaleSymmetry):
            return rescale_charge(
                [fetch(n) for n in sym.incoming], [fetch(n) for n in sym.outgoing]
            )
        return translation_charge([fetch(n) for n in sym.params])

    def _grad(self, name: str) -> Tensor:
        grad = self._params[name].grad
        if grad is None:
            raise MetasymError(
                f"parameter {name!r} has no gradient; call record() after loss.backward() or "
                "pass predict=False"
            )
        return grad

    def record(self, predict: bool = True) -> dict[str, Tensor]:
        """Append the current charges (and, if ``lr`` is set, the SGD predictions); return them."""
        now = self.charges()
        for name, q in now.items():
            self.history[name].append(q)
        if predict and self.lr is not None:
            eta, lam = self.lr, self.weight_decay
            with torch.no_grad():
                for sym in self.symmetries:
                    q = now[sym.name]
                    if isinstance(sym, TranslationSymmetry):
                        nxt = (1 - eta * lam) * q
                    else:
                        # |g|^2 for scale, |g_in|^2 - |g_out|^2 for rescale: same formula as Q.
                        nxt = (1 - eta * lam) ** 2 * q + eta**2 * self._charge(sym, self._grad)
                    self.predicted[sym.name].append(nxt)
        return now

    def as_tensors(self) -> dict[str, Tensor]:
        """The history stacked per symmetry. Shape: each ``(steps, size)``."""
        return {k: torch.stack(v) for k, v in self.history.items() if v}

    def drift(self) -> dict[str, Tensor]:
        """Charge minus its first recorded value. Shape: each ``(steps, size)``."""
        return {k: v - v[0] for k, v in self.as_tensors().items()}

    def prediction_error(self) -> dict[str, Tensor]:
        """Relative error ``|Q_{t+1} - pred_t| / max(|Q_{t+1}|, tiny)`` per step and component.

        Shape:
            each ``(steps - 1, size)``.
        """
        out: dict[str, Tensor] = {}
        for k, preds in self.predicted.items():
            m = min(len(preds), len(self.history[k]) - 1)
            if m < 1:
                continue
            meas = torch.stack(self.history[k][1 : m + 1])
            pred = torch.stack(preds[:m])
            tiny = torch.finfo(meas.dtype).tiny
            out[k] = (meas - pred).abs() / meas.abs().clamp_min(tiny)
        return out


# --------------------------------------------------------------------------- scale equilibrium


def scale_invariant_logistic_sgd(
    x: Tensor,
    y: Tensor,
    *,
    scale: float = 4.0,
    lr: float = 0.5,
    weight_decay: float = 1e-2,
    steps: int = 20_000,
    batch_size: int = 8,
    seed: int = 0,
) -> dict[str, Tensor]:
    """SGD with weight decay on weight-normalised logistic regression; returns the norm path.

    Logits ``z_n = scale * (w / |w|) . x_n``; the minibatch loss ``V`` is the mean logistic loss,
    invariant to ``w -> c w``. With ``h = dV / d w_hat`` the gradients are
    ``grad V(w) = (I - w_hat w_hat^T) h / |w|`` and ``grad V(w_hat) = (I - w_hat w_hat^T) h``;
    the update is ``w <- (1 - eta lam) w - eta grad V(w)`` (``torch.optim.SGD`` with
    ``weight_decay``). The gradient is written out by hand so that long runs stay fast.

    Args:
        x: inputs.
        y: labels in ``{0, 1}``.
        scale: logit scale.
        lr: ``eta``.
        weight_decay: ``lam``.
        steps: SGD steps.
        batch_size: minibatch size (sampled with replacement; the noise keeps ``|grad|`` > 0).
        seed: seed of the initial weight and of the minibatches.

    Returns:
        ``norm_sq`` (``|w_t|^2`` for t = 0..steps), ``grad_sq`` (``|grad V(w_t)|^2``) and
        ``grad_unit_sq`` (``|grad V(w_hat_t)|^2``), t = 0..steps-1.

    Shape:
        x: ``(n, i)``; y: ``(n,)``; returns ``(steps + 1,)``, ``(steps,)``, ``(steps,)``.
    """
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise MetasymError(
            f"expected x of shape (n, i) and y of shape (n,), got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    gen = torch.Generator().manual_seed(seed)
    n, i = x.shape
    w = torch.randn(i, generator=gen, dtype=x.dtype)
    idx = torch.randint(0, n, (steps, batch_size), generator=gen)
    norm_sq = torch.empty(steps + 1, dtype=x.dtype)
    grad_sq = torch.empty(steps, dtype=x.dtype)
    grad_unit_sq = torch.empty(steps, dtype=x.dtype)
    norm_sq[0] = w @ w
    for t in range(steps):
        xb, yb = x[idx[t]], y[idx[t]]  # (batch, i), (batch,)
        norm = norm_sq[t].sqrt()
        w_hat = w / norm
        h = scale * xb.T @ (torch.sigmoid(scale * xb @ w_hat) - yb) / batch_size
        g_unit = h - (h @ w_hat) * w_hat
        g = g_unit / norm
        w = (1 - lr * weight_decay) * w - lr * g
        norm_sq[t + 1] = w @ w
        grad_sq[t] = g @ g
        grad_unit_sq[t] = g_unit @ g_unit
    return {"norm_sq": norm_sq, "grad_sq": grad_sq, "grad_unit_sq": grad_unit_sq}


# --------------------------------------------------------------------------- MSR factorisation


@dataclass(frozen=True)
class Conv1dTaskBatch:
    """Valid 1D convolution regression tasks (the MSR paper's synthetic family).

    Shape:
        support_x: ``(b, n_s, i)``; support_y: ``(b, n_s, o)``; query_x: ``(b, n_q, i)``;
        query_y: ``(b, n_q, o)``; filters: ``(b, k)``.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    filters: Tensor


def sample_conv1d_tasks(
    n_tasks: int,
    gen: torch.Generator,
    *,
    n_in: int = 70,
    k: int = 3,
    n_support: int = 1,
    n_query: int = 19,
    dtype: torch.dtype = torch.float64,
) -> Conv1dTaskBatch:
    """Draw tasks ``y_o = sum_k f_k x_{o + k}`` with ``f ~ N(0, I_k)``, ``x ~ N(0, I)``.

    Args:
        n_tasks: ``b``.
        gen: the generator all draws use.
        n_in: input length ``i``; outputs have ``o = i - k + 1`` entries.
        k: filter taps.
        n_support: support examples per task.
        n_query: query examples per task.
        dtype: floating dtype.

    Returns:
        The task batch.
    """
    if n_in < k:
        raise MetasymError(f"n_in={n_in} must be at least the filter length k={k}")
    n_out = n_in - k + 1
    filters = torch.randn(n_tasks, k, generator=gen, dtype=dtype)
    x = torch.randn(n_tasks, n_support + n_query, n_in, generator=gen, dtype=dtype)
    windows = x.unfold(dimension=2, size=k, step=1)  # (b, n, o, k)
    y = torch.einsum("bnok,bk->bno", windows, filters)
    assert y.shape[-1] == n_out
    return Conv1dTaskBatch(
        x[:, :n_support], y[:, :n_support], x[:, n_support:], y[:, n_support:], filters
    )


def _alpha(alpha_raw: Tensor, alpha_param: AlphaParam) -> Tensor:
    if alpha_param == "linear":
        return alpha_raw
    if alpha_param == "log":
        return alpha_raw.exp()
    raise MetasymError(f"alpha_param={alpha_param!r} is not known; valid: ['linear', 'log']")


def msr_meta_loss(
    u: Tensor,
    v: Tensor,
    alpha_raw: Tensor,
    batch: Conv1dTaskBatch,
    alpha_param: AlphaParam = "linear",
) -> Tensor:
    """Query MSE after one inner SGD step on ``v`` for ``W = reshape(U v)`` (arXiv 2007.02933).

    Per task, ``L_s(W)`` is the support MSE, ``v' = v - alpha U^T vec(grad_W L_s)`` and the
    meta-loss is the query MSE of ``W' = reshape(U v')``, averaged over tasks. Here
    ``alpha = alpha_raw`` (``"linear"``) or ``exp(alpha_raw)`` (``"log"``).

    Symmetry: ``U -> c U``, ``v -> v / c``, ``alpha -> alpha / c^2`` leaves it unchanged, since
    ``W = U v`` is unchanged and ``U' v' = U v - alpha' c^2 U U^T grad_W L_s``. (``alpha -> c^2
    alpha`` would not: the inner step on ``v`` sees ``U U^T`` scaled by ``c^2``.)

    Args:
        u: the sharing matrix ``U``.
        v: the initial filter parameters ``v``.
        alpha_raw: the inner learning rate, or its logarithm.
        batch: the tasks.
        alpha_param: ``"linear"`` or ``"log"``.

    Returns:
        The meta-loss, a scalar.

    Shape:
        u: ``(o * i, k)``; v: ``(k,)``; alpha_raw: ``()``; returns ``()``.
    """
    xs, ys, xq, yq = batch.support_x, batch.support_y, batch.query_x, batch.query_y
    b, n_s, i = xs.shape
    o = ys.shape[-1]
    if u.shape != (o * i, v.shape[0]):
        raise MetasymError(
            f"U must have shape (o * i, k) = ({o * i}, {v.shape[0]}) for these tasks and v, "
            f"got {tuple(u.shape)}"
        )
    alpha = _alpha(alpha_raw, alpha_param)
    w = (u @ v).reshape(o, i)

    # Inner step: closed-form support gradient of the MSE, per task.
    resid = xs @ w.T - ys  # (b, n_s, o)
    grad_w = 2.0 / (n_s * o) * torch.einsum("bno,bni->boi", resid, xs)
    grad_v = grad_w.reshape(b, o * i) @ u  # (b, k)
    v_new = v - alpha * grad_v  # (b, k)
    w_new = (v_new @ u.T).reshape(b, o, i)

    pred = torch.einsum("boi,bni->bno", w_new, xq)
    return (pred - yq).pow(2).mean()


def msr_symmetry_transform(
    u: Tensor, v: Tensor, alpha_raw: Tensor, c: float, alpha_param: AlphaParam = "linear"
) -> tuple[Tensor, Tensor, Tensor]:
    """Apply ``U -> c U``, ``v -> v / c``, ``alpha -> alpha / c^2`` (``log alpha - 2 log c``)."""
    if c <= 0:
        raise MetasymError(f"c={c} must be > 0")
    if alpha_param == "log":
        return c * u, v / c, alpha_raw - 2.0 * math.log(c)
    _alpha(alpha_raw, alpha_param)
    return c * u, v / c, alpha_raw / c**2


def msr_charge(
    u: Tensor, v: Tensor, alpha_raw: Tensor, alpha_param: AlphaParam = "linear"
) -> Tensor:
    """Noether charge of the MSR symmetry ``(c U, v / c, alpha / c^2)`` under gradient flow.

    Differentiating the invariance at ``c = 1`` gives, for the meta-loss ``M``,

        <U, dM/dU> - <v, dM/dv> - 2 alpha dM/dalpha = 0.

    Under gradient flow ``d theta / dt = -grad M``, ``d|U|^2/dt = -2 <U, dM/dU>`` and so on, hence

    - linear ``alpha``: ``Q = |U|_F^2 - |v|^2 - 2 alpha^2`` is conserved;
    - ``alpha = exp(rho)``: the symmetry is ``rho -> rho - 2 log c`` and
      ``Q = |U|_F^2 - |v|^2 - 4 rho`` is conserved.

    For SGD with step ``eta`` the first-order change vanishes identically, leaving
    ``Q' - Q = eta^2 (|g_U|^2 - |g_v|^2 - 2 g_alpha^2)`` (linear) or
    ``eta^2 (|g_U|^2 - |g_v|^2)`` (log) per step.

    Shape:
        u: ``(o * i, k)``; v: ``(k,)``; alpha_raw: ``()``; returns ``()``.
    """
    base = u.pow(2).sum() - v.pow(2).sum()
    if alpha_param == "linear":
        return base - 2.0 * alpha_raw.pow(2)
    if alpha_param == "log":
        return base - 4.0 * alpha_raw
    raise MetasymError(f"alpha_param={alpha_param!r} is not known; valid: ['linear', 'log']")


def _msr_charge_change(
    before: Sequence[Tensor], after: Sequence[Tensor], alpha_param: AlphaParam
) -> Tensor:
    """``Q(after) - Q(before)`` as sums of ``(p' - p)(p' + p)``, free of cancellation in ``Q``."""
    (u0, v0, a0), (u1, v1, a1) = before, after
    change = ((u1 - u0) * (u1 + u0)).sum() - ((v1 - v0) * (v1 + v0)).sum()
    if alpha_param == "linear":
        return change - 2.0 * (a1 - a0) * (a1 + a0)
    return change - 4.0 * (a1 - a0)


def run_msr_charge_experiment(
    optimizer: Literal["sgd", "adam"],
    *,
    steps: int = 300,
    lr: float = 1e-3,
    n_tasks: int = 8,
    alpha_param: AlphaParam = "linear",
    n_in: int = 70,
    k: int = 3,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Meta-train ``(U, v, alpha)`` on 1D valid-convolution tasks and record the MSR charge.

    ``U`` starts as ``N(0, 1 / (o i))`` entries (so ``U^T U ~= I``), ``v`` as ``N(0, I) / 10``,
    ``alpha`` as 0.3 (or ``log 0.3``). Each outer step draws ``n_tasks`` fresh tasks (1 support,
    19 query examples), takes one inner step and one outer step of plain SGD or Adam; both see
    the same tasks for the same seed.

    With SGD the charge drifts only by ``O(eta^2)`` per step. Adam divides each coordinate of
    the gradient by its own running root-mean-square; this diagonal preconditioning does not
    commute with the symmetry (its generator scales ``U``, ``v`` and ``alpha`` by different
    factors and so does not keep ``<theta, generator>``-weighted sums of the update zero), so
    the charge drifts at first order in ``eta``.

    Args:
        optimizer: ``"sgd"`` or ``"adam"`` for the outer loop.
        steps: outer steps.
        lr: outer learning rate.
        n_tasks: tasks per outer step.
        alpha_param: ``"linear"`` or ``"log"``.
        n_in: input length (outputs have ``n_in - k + 1``).
        k: filter taps.
        seed: seed of the initialisation and the tasks.

    Returns:
        ``charge`` (Q before each step and after the last), ``meta_loss`` per step,
        ``charge_change`` (``Q_{t+1} - Q_t`` per step, computed as sums of ``(p' - p)(p' + p)``
        so that small changes are not lost to cancellation), and, for SGD,
        ``predicted_change`` ``eta^2 (|g_U|^2 - |g_v|^2 [- 2 g_alpha^2])`` per step.

    Shape:
        ``charge``: ``(steps + 1,)``; the others: ``(steps,)``.
    """
    if optimizer not in ("sgd", "adam"):
        raise MetasymError(f"optimizer={optimizer!r} is not known; valid: ['sgd', 'adam']")
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64
    n_out = n_in - k + 1
    u = torch.randn(n_out * n_in, k, generator=gen, dtype=dt) / math.sqrt(n_out * n_in)
    v = torch.randn(k, generator=gen, dtype=dt) / 10
    a0 = 0.3 if alpha_param == "linear" else math.log(0.3)
    alpha_raw = torch.tensor(a0, dtype=dt)
    params = [p.requires_grad_(True) for p in (u, v, alpha_raw)]
    opt: torch.optim.Optimizer
    opt = torch.optim.SGD(params, lr=lr) if optimizer == "sgd" else torch.optim.Adam(params, lr=lr)

    charge = torch.empty(steps + 1, dtype=dt)
    losses = torch.empty(steps, dtype=dt)
    predicted = torch.empty(steps, dtype=dt)
    changes = torch.empty(steps, dtype=dt)
    for t in range(steps):
        batch = sample_conv1d_tasks(n_tasks, gen, n_in=n_in, k=k)
        opt.zero_grad()
        loss = msr_meta_loss(u, v, alpha_raw, batch, alpha_param)
        loss.backward()
        with torch.no_grad():
            charge[t] = msr_charge(u, v, alpha_raw, alpha_param)
            g_u, g_v, g_a = (torch.zeros_like(p) if p.grad is None else p.grad for p in params)
            change = g_u.pow(2).sum() - g_v.pow(2).sum()
            if alpha_param == "linear":
                change = change - 2.0 * g_a.pow(2)
            predicted[t] = lr**2 * change
        losses[t] = loss.detach()
        before = [p.detach().clone() for p in params]
        opt.step()
        with torch.no_grad():
            changes[t] = _msr_charge_change(before, params, alpha_param)
    with torch.no_grad():
        charge[steps] = msr_charge(u, v, alpha_raw, alpha_param)
    out = {"charge": charge, "meta_loss": losses, "charge_change": changes}
    if optimizer == "sgd":
        out["predicted_change"] = predicted
    logger.info(
        "%s: meta-loss %.4g -> %.4g, charge drift %.3g",
        optimizer,
        float(losses[0]),
        float(losses[-1]),
        float(charge[-1] - charge[0]),
    )
    return out


# --------------------------------------------------------------------------- demonstration


class _WeightNormLogistic(nn.Module):
    def __init__(self, dim: int, scale: float, gen: torch.Generator) -> None:
        super().__init__()
        self.scale = scale
        self.w = nn.Parameter(torch.randn(dim, generator=gen, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x @ (self.w / self.w.norm())


class _TwoLayerReLU(nn.Module):
    def __init__(self, i: int, h: int, o: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(i, h, dtype=torch.float64)
        self.fc2 = nn.Linear(h, o, dtype=torch.float64)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _demo_relu(steps: int, lr: float, seed: int) -> ChargeTracker:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.randn(256, 10, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (256,), generator=gen)
    net = _TwoLayerReLU(10, 16, 4)
    syms: list[Symmetry] = [
        RescaleSymmetry(("fc1.weight", "fc1.bias"), ("fc2.weight",)),
        TranslationSymmetry(("fc2.weight", "fc2.bias")),
    ]
    tracker = ChargeTracker(net, syms, lr=lr)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, 256, (32,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
        tracker.record()
        opt.step()
    tracker.record(predict=False)
    return tracker


def _demo_scale(seed: int) -> tuple[ChargeTracker, dict[str, Tensor], float, float, float]:
    gen = torch.Generator().manual_seed(seed)
    dim, lr, wd, scale = 10, 0.5, 1e-2, 4.0
    x = torch.randn(1000, dim, generator=gen, dtype=torch.float64)
    w_true = torch.randn(dim, generator=gen, dtype=torch.float64)
    y = torch.rand(1000, generator=gen, dtype=torch.float64) < torch.sigmoid(x @ w_true)
    y = y.to(torch.float64)

    # The recursion through autograd and torch.optim.SGD.
    model = _WeightNormLogistic(dim, scale, gen)
    tracker = ChargeTracker(model, [ScaleSymmetry("w")], lr=lr, weight_decay=wd)
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    for _ in range(200):
        idx = torch.randint(0, 1000, (8,), generator=gen)
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(x[idx]), y[idx]).backward()
        tracker.record()
        opt.step()
    tracker.record(predict=False)

    # The equilibrium on a long run.
    run = scale_invariant_logistic_sgd(x, y, scale=scale, lr=lr, weight_decay=wd, seed=seed)
    tail = run["norm_sq"].shape[0] // 4
    measured = float(run["norm_sq"][tail:].pow(2).mean())
    predicted = equilibrium_norm4(lr, wd, run["grad_unit_sq"][tail:].mean())
    return tracker, run, measured, predicted, float(tail)


def main(argv: list[str] | None = None) -> None:
    """Check each charge law, run the MSR experiment, print a table and plot to ``--out``."""
    parser = argparse.ArgumentParser(
        prog="python -m metasym.theory.noether",
        description="Noether charges of SGD and their breaking by Adam.",
    )
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the figure")
    parser.add_argument("--steps", type=int, default=300, help="outer steps of the MSR runs")
    parser.add_argument(
        "--lr-sgd", type=float, nargs="+", default=[0.1, 0.3], help="outer SGD learning rates"
    )
    parser.add_argument("--lr-adam", type=float, default=1e-3, help="outer Adam learning rate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale_tracker, run, e_w4, pred_w4, tail = _demo_scale(args.seed)
    relu_tracker = _demo_relu(200, 0.1, args.seed)
    settings: list[tuple[Literal["sgd", "adam"], float]] = [("sgd", lr) for lr in args.lr_sgd]
    settings.append(("adam", args.lr_adam))
    runs = {
        f"{name} lr {lr:g}": run_msr_charge_experiment(
            name, steps=args.steps, lr=lr, seed=args.seed
        )
        for name, lr in settings
    }
    rng = torch.Generator().manual_seed(args.seed)
    batch = sample_conv1d_tasks(8, rng)
    # The convolutional sharing (W[o, o + k] = v[k]), scaled so that U^T U = I.
    u = torch.zeros(68, 70, 3, dtype=torch.float64)
    for k in range(3):
        u[:, :, k] = torch.eye(68, 70, dtype=torch.float64).roll(k, dims=1)  # no wrap: 70 > 68
    u = u.reshape(68 * 70, 3) / math.sqrt(68)
    v = torch.randn(3, generator=rng, dtype=torch.float64)
    a = torch.tensor(0.3, dtype=torch.float64)
    c = 1.7
    m0 = msr_meta_loss(u, v, a, batch)
    m_sym = msr_meta_loss(*msr_symmetry_transform(u, v, a, c), batch)
    m_wrong = msr_meta_loss(c * u, v / c, a * c**2, batch)

    errs = {**scale_tracker.prediction_error(), **relu_tracker.prediction_error()}
    print("Noether charges under SGD (float64)")
    print(f"{'check':<52} | {'value':>10}")
    rows = [
        (
            "scale: max rel. error of |w|^2 recursion",
            max(float(e.max()) for k, e in errs.items() if k.startswith("scale")),
        ),
        ("scale: E|w|^4 measured (tail of 20000 steps)", e_w4),
        ("scale: eta E|grad V(w_hat)|^2 / (2 lam)", pred_w4),
        ("scale: measured / predicted", e_w4 / pred_w4),
        (
            "rescale (ReLU): max rel. error of charge recursion",
            max(float(e.max()) for k, e in errs.items() if k.startswith("rescale")),
        ),
        (
            "translation: max |drift| of 1^T W, 1^T b",
            max(
                float(d.abs().max())
                for k, d in relu_tracker.drift().items()
                if k.startswith("translation")
            ),
        ),
        ("MSR: rel. change of M under (cU, v/c, alpha/c^2)", float((m_sym - m0).abs() / m0)),
        ("MSR: rel. change of M under (cU, v/c, alpha c^2)", float((m_wrong - m0).abs() / m0)),
    ]
    for name, r in runs.items():
        loss = r["meta_loss"]
        rows.append((f"MSR {name}: meta-loss, mean of first 20 steps", float(loss[:20].mean())))
        rows.append((f"MSR {name}: meta-loss, mean of last 20 steps", float(loss[-20:].mean())))
        rows.append((f"MSR {name}: final |Q - Q_0|", float(r["charge_change"].sum().abs())))
        if "predicted_change" in r:
            err = r["charge_change"] - r["predicted_change"]
            rows.append(
                (
                    f"MSR {name}: max rel. error of dQ = eta^2(...)",
                    float((err.abs() / r["charge_change"].abs()).max()),
                )
            )
    for name, value in rows:
        print(f"{name:<52} | {value:10.3e}")

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    steps_axis = torch.arange(run["norm_sq"].shape[0])
    ax.plot(steps_axis, run["norm_sq"].pow(2), lw=0.6, label=r"$|w_t|^4$")
    ax.axhline(pred_w4, color="C3", ls="--", label=r"$\eta\,E|\nabla V(\hat w)|^2 / 2\lambda$")
    ax.axvline(tail, color="grey", ls=":", lw=0.8, label="start of average")
    ax.set_xlabel("SGD step")
    ax.set_ylabel(r"$|w|^4$")
    ax.set_title("Scale symmetry: equilibrium norm (weight-norm logistic)")
    ax.legend()

    ax = axes[1]
    hist = relu_tracker.as_tensors()
    for key, preds in relu_tracker.predicted.items():
        if not key.startswith("rescale"):
            continue
        q = hist[key].sum(dim=1)
        q_pred = torch.cat([q[:1], torch.stack(preds).sum(dim=1)])
        ax.plot(q - q[0], label=r"measured $\sum_h |w_{in}|^2 - |w_{out}|^2$ drift")
        ax.plot(
            q_pred - q[0], "--", label=r"one-step prediction with $\eta^2(|g_{in}|^2-|g_{out}|^2)$"
        )
    for key, d in relu_tracker.drift().items():
        if key.startswith("translation"):
            ax.plot(
                d.abs().max(dim=1).values, label=r"translation $|\Delta 1^T W|, |\Delta 1^T b|$"
            )
    ax.set_xlabel("SGD step (lr 0.1)")
    ax.set_ylabel("charge - initial charge")
    ax.set_title("Two-layer ReLU net, softmax output")
    ax.legend(fontsize=8)

    ax = axes[2]
    for j, (name, r) in enumerate(runs.items()):
        drift = r["charge_change"].cumsum(0).abs().clamp_min(1e-18)  # after steps 1..T
        ax.semilogy(range(1, len(drift) + 1), drift, color=f"C{j}", label=name)
        if "predicted_change" in r:
            cum = r["predicted_change"].cumsum(0).abs()
            ax.semilogy(range(1, len(cum) + 1), cum, ":", color="k", lw=1.0)
    ax.plot([], [], ":", color="k", label=r"SGD: $\sum_t \eta^2(|g_U|^2-|g_v|^2-2g_\alpha^2)$")
    ax.set_xlabel("outer step")
    ax.set_ylabel(r"$|Q_t - Q_0|$,  $Q = |U|_F^2 - |v|^2 - 2\alpha^2$")
    ax.set_title(r"MSR $W = \mathrm{reshape}(Uv)$: charge drift, SGD vs Adam")
    ax.legend()
    fig.suptitle("Noether charges of learning dynamics (arXiv 2105.02716)")
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "noether.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
