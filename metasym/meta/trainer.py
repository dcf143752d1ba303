"""The outer loop: meta-learn sharing, initial fast parameters and inner learning rates.

Each outer step samples ``tasks_per_step`` training tasks, adapts every task's fast parameters on
its support set (``metasym.meta.inner``), and takes an Adam step on the mean query loss with
respect to the meta parameters (MSR's ``U``), the initial fast parameters and the learned inner
learning rates (arXiv 2007.02933).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import signal
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metasym.errors import MetasymError
from metasym.layers import split_parameters
from metasym.meta.inner import (
    BACKENDS,
    LOSSES,
    SOLVERS,
    inner_solver,
    query_outputs,
    task_losses,
)
from tasks.base import TaskBatch, TaskFamily, check_sizes

__all__ = ["CHECKPOINT_FORMAT", "EvalResult", "MetaConfig", "MetaLearner", "load_checkpoint"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "metasym-checkpoint-v1"
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class MetaConfig:
    """Settings of the inner and outer loop.

    Attributes:
        outer_steps: number of outer (meta) steps.
        tasks_per_step: tasks per outer step.
        outer_lr: Adam learning rate of the outer loop.
        lr_schedule: ``"constant"``, or ``"cosine"`` (decay to zero over ``outer_steps``; it lets
            the rows of ``U`` settle, so the learned ties are cleaner).
        weight_decay: decoupled weight decay (AdamW) on the meta parameters (MSR's ``U``) only;
            it pulls weights that no task needs to zero.
        inner_steps: SGD steps of the inner loop.
        inner_lr: initial value of each learned inner learning rate.
        learn_inner_lr: meta-learn the inner learning rates.
        first_order: drop second-order terms of the meta-gradient.
        backend: ``"func"`` or ``"higher"``.
        loss: ``"mse"`` (regression) or ``"cross_entropy"`` (classification; evaluation then also
            reports accuracy).
        inner: inner solver, ``"sgd"`` or ``"ridge"`` (closed form for layers linear in ``v``).
        n_support: support examples per task.
        n_query: query examples per task.
        eval_tasks: size of the fixed test set of tasks.
        eval_every: evaluate on the test tasks every this many outer steps (0: only at the end).
        checkpoint_every: write a checkpoint every this many outer steps (0: only at the end).
        seed: seed of the model's initialisation and of the training tasks.
        test_seed: seed of the fixed test tasks (disjoint from the training stream).
    """

    outer_steps: int = 1000
    tasks_per_step: int = 32
    outer_lr: float = 1e-3
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    inner_steps: int = 1
    inner_lr: float = 0.1
    learn_inner_lr: bool = True
    first_order: bool = False
    backend: str = "func"
    loss: str = "mse"
    inner: str = "sgd"
    n_support: int = 1
    n_query: int = 19
    eval_tasks: int = 300
    eval_every: int = 0
    checkpoint_every: int = 0
    seed: int = 0
    test_seed: int = 1_000_003

    def __post_init__(self) -> None:
        check_sizes(
            outer_steps=self.outer_steps,
            tasks_per_step=self.tasks_per_step,
            n_support=self.n_support,
            n_query=self.n_query,
            eval_tasks=self.eval_tasks,
        )
        if not isinstance(self.inner_steps, int) or self.inner_steps < 0:
            raise MetasymError(f"inner_steps must be an integer >= 0; got {self.inner_steps!r}")
        for name in ("eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise MetasymError(
                    f"{name} must be an integer >= 0 (0 turns it off); got {value!r}"
                )
        if not (self.outer_lr > 0 and math.isfinite(self.outer_lr)):
            raise MetasymError(f"outer_lr must be a positive finite number; got {self.outer_lr!r}")
        if not (self.inner_lr > 0 and math.isfinite(self.inner_lr)):
            raise MetasymError(f"inner_lr must be a positive finite number; got {self.inner_lr!r}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise MetasymError(
                f"weight_decay must be a finite number >= 0; got {self.weight_decay!r}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise MetasymError(
                f"unknown lr_schedule {self.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}"
            )
        if self.loss not in LOSSES:
            raise MetasymError(f"unknown loss {self.loss!r}; valid losses: {', '.join(LOSSES)}")
        if self.inner not in SOLVERS:
            raise MetasymError(
                f"unknown inner solver {self.inner!r}; valid solvers: {', '.join(SOLVERS)}"
            )
        if self.backend not in BACKENDS:
            raise MetasymError(
                f"unknown backend {self.backend!r}; valid backends: {', '.join(BACKENDS)}"
            )


def _mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and the half-width of a normal-approximation 95% interval."""
    n = values.numel()
    sem = values.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
    return values.mean().item(), 1.96 * sem


@dataclass
class EvalResult:
    """Query loss over a set of test tasks: mean, 95% interval half-width, and per task.

    For classification (``loss="cross_entropy"``) ``accuracy`` and ``accuracy_ci95`` hold the mean
    query accuracy and its interval; ``mean`` is then the mean cross-entropy.
    """

    mean: float
    ci95: float
    per_task: list[float] = field(repr=False)
    accuracy: float | None = None
    accuracy_ci95: float | None = None

    def as_dict(self) -> dict[str, float]:
        out = {"mse": self.mean, "ci95": self.ci95, "tasks": len(self.per_task)}
        if self.accuracy is not None and self.accuracy_ci95 is not None:
            out = {"loss": self.mean, "ci95": self.ci95, "tasks": len(self.per_task)}
            out.update(accuracy=self.accuracy, accuracy_ci95=self.accuracy_ci95)
        return out


class MetaLearner:
    """Meta-train a model on a task family.

    Args:
        model: the model (its layers declare which parameters are fast).
        family: the task family to sample training and test tasks from.
        config: loop settings.

    Example:
        >>> learner = MetaLearner(build_model("msr_fc", family), family, MetaConfig(outer_steps=10))
        >>> learner.fit()          # doctest: +SKIP
        >>> learner.evaluate().mean  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, family: TaskFamily, config: MetaConfig) -> None:
        if config.loss != family.loss:
            raise MetasymError(
                f"loss {config.loss!r} does not fit task {family.name!r}, whose targets call for "
                f"loss {family.loss!r}"
            )
        self.model, self.family, self.config = model, family, config
        fast, _ = split_parameters(model)
        self.fast_names = list(fast)
        self.inner_lrs = nn.Parameter(torch.full((len(fast),), float(config.inner_lr)))
        self.inner_lrs.requires_grad_(config.learn_inner_lr)
        fast_params, meta_params = split_parameters(model)
        others = list(fast_params.values()) + ([self.inner_lrs] if config.learn_inner_lr else [])
        if config.weight_decay > 0:
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(
                [
                    {"params": list(meta_params.values()), "weight_decay": config.weight_decay},
                    {"params": others, "weight_decay": 0.0},
                ],
                lr=config.outer_lr,
            )
        else:
            params = list(model.parameters()) + ([self.inner_lrs] if config.learn_inner_lr else [])
            self.optimizer = torch.optim.Adam(params, lr=config.outer_lr)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step_count = 0
        self.history: list[dict[str, float]] = []
        self.metadata: dict[str, Any] = {}  # saved with checkpoints (the run's task and model)
        self._test_batch: TaskBatch | None = None

    # -- the two loops ----------------------------------------------------------------------

    def query_losses(self, batch: TaskBatch, first_order: bool | None = None) -> torch.Tensor:
        """Per-task query loss after inner adaptation (differentiable). Shape: ``(b,)``."""
        fo = self.config.first_order if first_order is None else first_order
        fast, meta = split_parameters(self.model)
        return task_losses(
            self.model,
            fast,
            meta,
            self.inner_lrs,
            batch,
            self.config.inner_steps,
            fo,
            self.config.backend,
            self.config.loss,
            self.config.inner,
        )

    def meta_step(self, batch: TaskBatch | None = None) -> float:
        """One outer Adam step on a fresh batch of training tasks; returns the meta-loss."""
        cfg = self.config
        if batch is None:
            batch = self.family.sample(
                cfg.tasks_per_step, cfg.n_support, cfg.n_query, generator=self.generator
            )
        self._check_batch(batch)
        loss = self.query_losses(batch).mean()
        if not torch.isfinite(loss):
            raise MetasymError(
                f"meta-loss became {loss.item()} at outer step {self.step_count + 1}; training "
                "stopped before the step was applied. Lower outer_lr or inner_lr, or set "
                "learn_inner_lr=false."
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.lr_schedule == "cosine":
            progress = min(self.step_count / cfg.outer_steps, 1.0)
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.outer_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        self.optimizer.step()
        self.step_count += 1
        return float(loss.detach())

    def fit(
        self,
        steps: int | None = None,
        callback: Callable[[int, float], None] | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
    ) -> list[dict[str, float]]:
        """Run outer steps until ``steps`` (default ``config.outer_steps``) have been taken.

        Args:
            steps: total number of outer steps to reach (a resumed learner continues from its step).
            callback: called as ``callback(step, loss)`` after each step (progress bars, loggers).
            checkpoint: where to write checkpoints: every ``checkpoint_every`` steps, at the end,
                and on Ctrl-C, which finishes the step in flight, writes the checkpoint and then
                raises ``KeyboardInterrupt``.

        Returns:
            The history: one record per step with ``step`` and ``train_loss`` (and ``test_mse``
            where evaluated).
        """
        total = self.config.outer_steps if steps is None else steps
        # Ctrl-C only raises a flag: the step in flight finishes, so the checkpoint written on
        # the way out is a consistent state and a resumed run repeats the uninterrupted one.
        # A second Ctrl-C stops at once without writing.
        stop = {"requested": False}

        def on_sigint(signum: int, frame: object) -> None:
            if stop["requested"]:
                raise KeyboardInterrupt
            stop["requested"] = True

        previous = None
        if checkpoint is not None and threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            self._fit(total, callback, checkpoint, stop)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return self.history

    def _fit(
        self,
        total: int,
        callback: Callable[[int, float], None] | None,
        checkpoint: str | os.PathLike[str] | None,
        stop: dict[str, bool],
    ) -> None:
        cfg = self.config
        saved_at = -1
        while self.step_count < total:
            loss = self.meta_step()
            record = {"step": float(self.step_count), "train_loss": loss}
            if cfg.eval_every and self.step_count % cfg.eval_every == 0:
                record["test_mse"] = self.evaluate().mean
            self.history.append(record)
            if callback is not None:
                callback(self.step_count, loss)
            if (
                checkpoint is not None
                and cfg.checkpoint_every
                and self.step_count % cfg.checkpoint_every == 0
            ):
                self.save(checkpoint)
                saved_at = self.step_count
            if stop["requested"]:
                if checkpoint is not None:
                    self.save(checkpoint)
                    log.warning("interrupted at step %d; checkpoint written", self.step_count)
                raise KeyboardInterrupt
        if checkpoint is not None and saved_at != self.step_count:
            self.save(checkpoint)

    # -- evaluation -------------------------------------------------------------------------

    def test_batch(self) -> TaskBatch:
        """The fixed test tasks (drawn once from the test split with ``test_seed``)."""
        if self._test_batch is None:
            cfg = self.config
            gen = torch.Generator().manual_seed(cfg.test_seed)
            self._test_batch = self.family.sample(
                cfg.eval_tasks, cfg.n_support, cfg.n_query, generator=gen, split="test"
            )
        return self._test_batch

    def evaluate(self, batch: TaskBatch | None = None, chunk: int = 100) -> EvalResult:
        """Mean query MSE after adaptation, with a 95% normal-approximation interval."""
        batch = self.test_batch() if batch is None else batch
        self._check_batch(batch)
        parts = []
        for start in range(0, batch.num_tasks, chunk):
            sub = TaskBatch(
                *(
                    t[start : start + chunk]
                    for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
                )
            )
            parts.append(self.query_losses(sub, first_order=True).detach())
        losses = torch.cat(parts).double()
        mean, ci95 = _mean_ci95(losses)
        result = EvalResult(mean, ci95, losses.tolist())
        if self.config.loss == "cross_entropy":
            result.accuracy, result.accuracy_ci95 = _mean_ci95(self._accuracies(batch, chunk))
        return result

    def _accuracies(self, batch: TaskBatch, chunk: int) -> torch.Tensor:
        fast, meta = split_parameters(self.model)
        cfg = self.config
        parts = []
        for start in range(0, batch.num_tasks, chunk):
            sub = TaskBatch(
                *(
                    t[start : start + chunk]
                    for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
                )
            )
            logits = query_outputs(
                self.model, fast, meta, self.inner_lrs, sub, cfg.inner_steps, cfg.loss, cfg.inner
            ).detach()  # (b, n_q, classes)
            parts.append((logits.argmax(-1) == sub.query_y[..., 0].long()).double().mean(1))
        return torch.cat(parts)

    def adapt(self, x: torch.Tensor, y: torch.Tensor, steps: int | None = None) -> nn.Module:
        """A copy of the model with its fast parameters adapted to one task's examples.

        Shape:
            x: ``(n, i)``; y: ``(n, o)``.
        """
        fast, meta = split_parameters(self.model)
        cfg = self.config
        steps = cfg.inner_steps if steps is None else steps
        solve = inner_solver(
            self.model, fast, meta, self.inner_lrs, steps, True, LOSSES[cfg.loss], cfg.inner
        )
        adapted = solve(x, y)
        clone = copy.deepcopy(self.model)
        with torch.no_grad():
            for name, value in adapted.items():
                clone.get_parameter(name).copy_(value)
        return clone

    def _check_batch(self, batch: TaskBatch) -> None:
        i, o = self.family.in_features, self.family.out_features
        if batch.support_x.shape[-1] != i or batch.support_y.shape[-1] != o:
            raise MetasymError(
                f"tasks have {batch.support_x.shape[-1]} inputs and {batch.support_y.shape[-1]} "
                f"outputs, but the model was built for {i} -> {o}"
            )

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model_class": type(self.model).__name__,
            "model": self.model.state_dict(),
            "inner_lrs": self.inner_lrs.detach().clone(),
            "fast_names": self.fast_names,
            "optimizer": self.optimizer.state_dict(),
            "step": self.step_count,
            "generator": self.generator.get_state(),
            "history": self.history,
            "config": asdict(self.config),
            "metadata": self.metadata,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("model_class") != type(self.model).__name__:
            raise MetasymError(
                f"checkpoint holds a {state.get('model_class')!r} model; this run builds "
                f"{type(self.model).__name__!r}"
            )
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise MetasymError(f"checkpoint does not fit this model: {err}") from err
        with torch.no_grad():
            self.inner_lrs.copy_(state["inner_lrs"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step_count = int(state["step"])
        self.history = list(state["history"])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a checkpoint atomically (temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(self.state_dict(), f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        log.debug("checkpoint written to %s at step %d", path, self.step_count)
        return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by ``MetaLearner.save``; refuse anything else clearly."""
    path = Path(path)
    if not path.is_file():
        raise MetasymError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for damaged files
        raise MetasymError(
            f"checkpoint {str(path)!r} cannot be read (truncated or not a checkpoint): {err}"
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise MetasymError(
            f"{str(path)!r} is not a metasym checkpoint (expected format {CHECKPOINT_FORMAT!r})"
        )
    return state
