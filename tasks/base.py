"""The interface every task family implements, and the batch of tasks it samples.

A *family* is a distribution over regression problems ``x -> y`` that share a hidden symmetry.
Inputs and targets are flat vectors: ``x`` has ``i`` entries and ``y`` has ``o``; ``in_shape`` and
``out_shape`` say how to view them as images or signals (for conv baselines).

A family's ground truth has two forms:

- ``true_partition()``: for every weight position ``(o, i)`` of the linear map that generated the
  tasks, the id of the filter parameter it uses, or ``-1`` where the weight is always zero.
- ``true_group()``: the permutation group of the layer, a ``sympy`` ``PermutationGroup`` of degree
  ``o + i`` whose points ``0 .. o-1`` are output units and ``o .. o+i-1`` input units; every element
  maps outputs to outputs and inputs to inputs. ``None`` when the family has no exact symmetry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from metasym.errors import MetasymError

if TYPE_CHECKING:
    from sympy.combinatorics import PermutationGroup

__all__ = ["TaskBatch", "TaskFamily", "check_sizes"]


@dataclass(frozen=True)
class TaskBatch:
    """A batch of ``b`` tasks, each with a support and a query set.

    Shape:
        support_x: ``(b, n_s, i)``; support_y: ``(b, n_s, o)``;
        query_x: ``(b, n_q, i)``; query_y: ``(b, n_q, o)``.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def __post_init__(self) -> None:
        sx, sy, qx, qy = self.support_x, self.support_y, self.query_x, self.query_y
        for name, t in (("support_x", sx), ("support_y", sy), ("query_x", qx), ("query_y", qy)):
            if t.ndim != 3:
                raise MetasymError(
                    f"TaskBatch.{name} must have shape (b, n, features); got {tuple(t.shape)}"
                )
        if not (sx.shape[0] == sy.shape[0] == qx.shape[0] == qy.shape[0]):
            raise MetasymError(
                "TaskBatch tensors disagree on the number of tasks b: "
                f"{sx.shape[0]}, {sy.shape[0]}, {qx.shape[0]}, {qy.shape[0]}"
            )
        if sx.shape[1] != sy.shape[1] or qx.shape[1] != qy.shape[1]:
            raise MetasymError(
                "x and y disagree on the number of examples: "
                f"support {sx.shape[1]} vs {sy.shape[1]}, "
                f"query {qx.shape[1]} vs {qy.shape[1]}"
            )
        if sx.shape[2] != qx.shape[2] or sy.shape[2] != qy.shape[2]:
            raise MetasymError(
                f"support and query disagree on feature sizes: x {sx.shape[2]} vs {qx.shape[2]}, "
                f"y {sy.shape[2]} vs {qy.shape[2]}"
            )

    @property
    def num_tasks(self) -> int:
        return int(self.support_x.shape[0])

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(
            *(t.to(device) for t in (self.support_x, self.support_y, self.query_x, self.query_y))
        )

    def check_finite(self) -> None:
        """Raise ``MetasymError`` if any tensor holds NaN or infinity."""
        for name in ("support_x", "support_y", "query_x", "query_y"):
            t = getattr(self, name)
            if not torch.isfinite(t).all():
                bad = int((~torch.isfinite(t)).sum())
                raise MetasymError(
                    f"task data {name} holds {bad} non-finite values; tasks must be finite"
                )


def check_sizes(**sizes: int) -> None:
    """Raise ``MetasymError`` naming the first size that is not a positive integer."""
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise MetasymError(f"{name} must be a positive integer; got {value!r}")


class TaskFamily(ABC):
    """A seeded distribution of linear regression tasks that share a hidden weight-sharing pattern.

    Subclasses set ``name``, ``in_shape`` and ``out_shape`` and implement ``_sample``,
    ``true_partition`` and ``true_group``.
    """

    name: str = "family"
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kernel_size: int | tuple[int, ...] | None = None  # for the conv baseline, where one applies
    conv_padding: tuple[int, ...] | None = None  # circular F.pad widths for the conv baseline
    filter_size: int = 1  # free parameters of one task's filter: MSR's natural latent size k
    models: tuple[str, ...] = ("msr_fc", "dense", "conv", "lc")  # models that fit (baselines=all)
    loss: str = "mse"  # the loss its targets call for: "mse", or "cross_entropy" for class labels

    @property
    def in_features(self) -> int:
        return int(torch.Size(self.in_shape).numel())

    @property
    def out_features(self) -> int:
        return int(torch.Size(self.out_shape).numel())

    def sample(
        self,
        num_tasks: int,
        n_support: int = 1,
        n_query: int = 19,
        *,
        generator: torch.Generator,
        split: str = "train",
    ) -> TaskBatch:
        """Draw ``num_tasks`` tasks with ``n_support`` and ``n_query`` examples each.

        Args:
            num_tasks: number of tasks ``b``.
            n_support: support examples per task (used by the inner loop).
            n_query: query examples per task (used by the outer loop and for evaluation).
            generator: the seeded source of every random draw.
            split: ``"train"`` or ``"test"``; families with a finite data set draw inputs from
                disjoint parts of it.

        Returns:
            A ``TaskBatch`` with ``b = num_tasks``.
        """
        check_sizes(num_tasks=num_tasks, n_support=n_support, n_query=n_query)
        if split not in ("train", "test"):
            raise MetasymError(f"split must be 'train' or 'test'; got {split!r}")
        batch = self._sample(num_tasks, n_support, n_query, generator, split)
        batch.check_finite()
        return batch

    @abstractmethod
    def _sample(
        self, b: int, n_support: int, n_query: int, generator: torch.Generator, split: str
    ) -> TaskBatch: ...

    @abstractmethod
    def true_partition(self) -> torch.Tensor:
        """Filter-parameter id of each weight position, ``-1`` where the weight is zero.

        Shape:
            ``(o, i)``, dtype ``long``.
        """

    @abstractmethod
    def true_group(self) -> PermutationGroup | None:
        """The layer's symmetry group on ``o + i`` points, or ``None`` without exact symmetry."""


class LinearTaskFamily(TaskFamily):
    """A family whose tasks are linear maps ``y = W x`` with a per-task weight matrix.

    Subclasses implement ``_weights`` (one ``W`` per task) and ``_inputs`` (the examples).
    """

    @abstractmethod
    def _weights(self, b: int, generator: torch.Generator) -> torch.Tensor:
        """Per-task weights. Shape: ``(b, o, i)``."""

    def _inputs(self, b: int, n: int, generator: torch.Generator, split: str) -> torch.Tensor:
        """Per-task inputs, ``N(0, I)`` unless overridden. Shape: ``(b, n, i)``."""
        return torch.randn(b, n, self.in_features, generator=generator)

    def _sample(
        self, b: int, n_support: int, n_query: int, generator: torch.Generator, split: str
    ) -> TaskBatch:
        w = self._weights(b, generator)  # (b, o, i)
        x = self._inputs(b, n_support + n_query, generator, split)  # (b, n, i)
        y = torch.einsum("boi,bni->bno", w, x)
        return TaskBatch(x[:, :n_support], y[:, :n_support], x[:, n_support:], y[:, n_support:])


def weights_from_partition(partition: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Fill each weight position with the filter entry its class names (zero for class ``-1``).

    Args:
        partition: class id per weight position, ``-1`` for a zero weight.
        filters: one filter per task.

    Returns:
        The per-task weights.

    Shape:
        partition: ``(o, i)``; filters: ``(b, k)``; returns ``(b, o, i)``.
    """
    b, k = filters.shape
    padded = torch.cat([filters, filters.new_zeros(b, 1)], dim=1)  # (b, k + 1); index k is zero
    index = torch.where(partition < 0, k, partition)
    return padded[:, index]
