"""The inner loop: adapt a model's fast parameters to each task's support set by SGD.

For a task with support set ``(x_s, y_s)`` and query set ``(x_q, y_q)``, with fast parameters
``phi`` (MSR's filter ``v``), meta parameters ``theta`` (MSR's sharing ``U``) and one learned rate
``alpha_p`` per fast tensor, ``inner_steps`` SGD steps give

    phi_{t+1} = phi_t - alpha * grad_phi L(phi_t, theta; x_s, y_s)

and the task's meta-loss is ``L(phi_T, theta; x_q, y_q)``. Second-order by default: the outer
gradient flows through ``grad_phi``; ``first_order=True`` treats the inner gradients as constants.

Two backends compute the per-task query losses with one interface:

- ``func`` (default): ``torch.func.functional_call`` + ``grad``, vectorised over the tasks of a
  batch with ``vmap``.
- ``higher``: a differentiable SGD from the ``higher`` library, one task at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from metasym.errors import MetasymError
from tasks.base import TaskBatch

__all__ = [
    "BACKENDS",
    "LOSSES",
    "SOLVERS",
    "LossFn",
    "Params",
    "adapt",
    "inner_solver",
    "query_outputs",
    "task_losses",
]

Params: TypeAlias = dict[str, torch.Tensor]
Backend: TypeAlias = Callable[..., torch.Tensor]
LossFn: TypeAlias = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # class labels travel as a (n, 1) column so that TaskBatch keeps one layout for all tasks
    return F.cross_entropy(logits, y[..., 0].long())


LOSSES: dict[str, LossFn] = {"mse": F.mse_loss, "cross_entropy": _cross_entropy}
"""``mse``: regression, ``y`` of shape ``(n, o)``; ``cross_entropy``: classification, logits
``(n, classes)`` and labels ``y`` of shape ``(n, 1)``."""

SOLVERS = ("sgd", "ridge")
"""``sgd``: ``inner_steps`` SGD steps; ``ridge``: a closed-form ridge solve for layers linear in
their fast parameters (``metasym.meta.ridge``)."""


def _loss(
    model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn = F.mse_loss
) -> torch.Tensor:
    return loss_fn(functional_call(model, params, (x,)), y)


def adapt(
    model: nn.Module,
    fast: Params,
    meta: Params,
    lrs: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    first_order: bool = False,
    loss_fn: LossFn = F.mse_loss,
) -> Params:
    """Adapt the fast parameters of one task by ``steps`` SGD steps on ``(x, y)``.

    Args:
        model: the module whose parameters ``fast`` and ``meta`` replace (by name).
        fast: initial fast parameters.
        meta: meta parameters (held fixed).
        lrs: one learning rate per fast tensor, in the order of ``fast``.
        x: support inputs.
        y: support targets.
        steps: number of SGD steps (0 returns ``fast``).
        first_order: treat inner gradients as constants for the outer gradient.
        loss_fn: the support loss (one of ``LOSSES``).

    Returns:
        The adapted fast parameters.

    Shape:
        x: ``(n, i)``; y: ``(n, o)``; lrs: ``(len(fast),)``.
    """

    def support_loss(f: Params) -> torch.Tensor:
        return _loss(model, {**meta, **f}, x, y, loss_fn)

    names = list(fast)
    for _ in range(steps):
        grads = grad(support_loss)(fast)
        if first_order:
            grads = {n: g.detach() for n, g in grads.items()}
        fast = {n: fast[n] - lrs[j] * grads[n] for j, n in enumerate(names)}
    return fast


def inner_solver(
    model: nn.Module,
    fast: Params,
    meta: Params,
    lrs: torch.Tensor,
    steps: int,
    first_order: bool,
    loss_fn: LossFn,
    solver: str,
) -> Callable[[torch.Tensor, torch.Tensor], Params]:
    """The per-task inner solver as a function of the support set (vmappable)."""
    if solver == "ridge":
        from metasym.meta.ridge import ridge_adapt

        return lambda x, y: ridge_adapt(model, fast, meta, lrs, x, y, loss_fn)
    if solver != "sgd":
        raise MetasymError(f"unknown inner solver {solver!r}; valid solvers: {', '.join(SOLVERS)}")
    return lambda x, y: adapt(model, fast, meta, lrs, x, y, steps, first_order, loss_fn)


def _func_losses(
    model: nn.Module,
    fast: Params,
    meta: Params,
    lrs: torch.Tensor,
    batch: TaskBatch,
    steps: int,
    first_order: bool,
    loss_fn: LossFn,
    solver: str = "sgd",
) -> torch.Tensor:
    solve = inner_solver(model, fast, meta, lrs, steps, first_order, loss_fn, solver)

    def one_task(
        sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor
    ) -> torch.Tensor:
        return _loss(model, {**meta, **solve(sx, sy)}, qx, qy, loss_fn)

    return vmap(one_task)(batch.support_x, batch.support_y, batch.query_x, batch.query_y)


def query_outputs(
    model: nn.Module,
    fast: Params,
    meta: Params,
    lrs: torch.Tensor,
    batch: TaskBatch,
    steps: int = 1,
    loss: str = "mse",
    solver: str = "sgd",
) -> torch.Tensor:
    """Model outputs on every task's query inputs after adapting on its support set.

    Shape:
        returns ``(b, n_q, o)`` (``o`` = number of classes for classification).
    """
    solve = inner_solver(model, fast, meta, lrs, steps, True, LOSSES[loss], solver)

    def one_task(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**meta, **solve(sx, sy)}, (qx,))

    return vmap(one_task)(batch.support_x, batch.support_y, batch.query_x)


def _higher_losses(
    model: nn.Module,
    fast: Params,
    meta: Params,
    lrs: torch.Tensor,
    batch: TaskBatch,
    steps: int,
    first_order: bool,
    loss_fn: LossFn,
) -> torch.Tensor:
    import higher

    # the model's own parameters must be the ones passed in: higher patches the module in place
    own = dict(model.named_parameters())
    for name, p in {**fast, **meta}.items():
        if own.get(name) is not p:
            raise MetasymError(
                f"backend 'higher' adapts the model's own parameters; {name!r} was replaced. "
                "Use backend 'func' for parameters that are not the model's."
            )
    groups: list[dict] = [{"params": [p]} for p in fast.values()]
    if meta:
        groups.append({"params": list(meta.values())})
    rates = [lrs[j] for j in range(len(fast))] + ([torch.zeros(())] if meta else [])
    inner_opt = torch.optim.SGD(groups, lr=0.0)

    def detach_all(grads: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        return [None if g is None else g.detach() for g in grads]

    losses = []
    for t in range(batch.num_tasks):
        with higher.innerloop_ctx(
            model, inner_opt, copy_initial_weights=False, override={"lr": rates}
        ) as (fmodel, diffopt):
            for _ in range(steps):
                support = loss_fn(fmodel(batch.support_x[t]), batch.support_y[t])
                diffopt.step(support, grad_callback=detach_all if first_order else None)
            losses.append(loss_fn(fmodel(batch.query_x[t]), batch.query_y[t]))
    return torch.stack(losses)


BACKENDS: dict[str, Backend] = {"func": _func_losses, "higher": _higher_losses}


def task_losses(
    model: nn.Module,
    fast: Params,
    meta: Params,
    lrs: torch.Tensor,
    batch: TaskBatch,
    steps: int = 1,
    first_order: bool = False,
    backend: str = "func",
    loss: str = "mse",
    solver: str = "sgd",
) -> torch.Tensor:
    """Query loss of every task in ``batch`` after adapting on its support set.

    Args:
        model: the module the parameters belong to.
        fast: initial fast parameters (adapted per task).
        meta: meta parameters (shared by all tasks).
        lrs: one inner learning rate per fast tensor.
        batch: the tasks.
        steps: inner SGD steps.
        first_order: drop second-order terms from the outer gradient.
        backend: ``"func"`` (vmapped ``torch.func``) or ``"higher"`` (task by task).
        loss: one of ``LOSSES``.
        solver: one of ``SOLVERS``; ``"ridge"`` ignores ``steps``, ``first_order`` and ``backend``.

    Returns:
        Per-task query MSE. Shape: ``(b,)``.
    """
    if backend not in BACKENDS:
        raise MetasymError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if lrs.shape != (len(fast),):
        raise MetasymError(
            f"lrs has shape {tuple(lrs.shape)}; expected ({len(fast)},), one per fast tensor"
        )
    if loss not in LOSSES:
        raise MetasymError(f"unknown loss {loss!r}; valid losses: {', '.join(LOSSES)}")
    if solver != "sgd":
        if backend != "func":
            raise MetasymError(
                f"inner solver {solver!r} runs on backend 'func' only; got {backend!r}"
            )
        return _func_losses(model, fast, meta, lrs, batch, steps, first_order, LOSSES[loss], solver)
    return BACKENDS[backend](model, fast, meta, lrs, batch, steps, first_order, LOSSES[loss])
