"""Few-shot digit classification whose query images are rotated and flipped: a hidden D4.

The analogue, on scikit-learn's 8x8 handwritten digits (bundled, no download), of the augmented
few-shot classification experiment of MSR (Meta-Learning Symmetries by Reparameterization,
arXiv 2007.02933). Each task is an ``N``-way ``K``-shot problem:

- ``N`` of the digit classes are drawn from the task's split of the classes and given the labels
  ``0 .. N-1`` in a random order, so that no model can memorise which digit a label means;
- the support set holds ``K`` images per class, as they are;
- the query set holds ``n_query_per_class`` other images per class, each moved by an element
  ``g`` of D4 (rotations by multiples of 90 degrees and reflections of the 8x8 grid) drawn
  uniformly and independently per image: ``x_q(p) = x(g^{-1} p)``.

A learner that adapts only on the upright support images and is scored on the transformed query
images is rewarded for being invariant to D4, which the tasks never state: the group is hidden
in the data, not in a linear map. Classification therefore has no weight-tying ground truth:
``true_group()`` is ``None`` and ``true_partition()`` raises ``NotImplementedError``;
``pixel_group()`` gives the hidden group as a permutation group of the 64 pixels.

The ten classes are split into meta-training and meta-test classes at random (seeded). With ten
digits and the default 5-way tasks a 5/5 split is the only one that leaves 5 classes on both
sides, so the split is always into two halves and ``n_way`` can be at most 5. Every task of a
split uses the classes of that split only; the two splits are disjoint. The default ``seed=2``
gives meta-training classes 1, 5, 6, 7, 8 and meta-test classes 0, 2, 3, 4, 9: a half turn maps a
6 onto a 9, so a split holding both would make two of its classes indistinguishable to any
D4-invariant learner (``seed=0`` does that: test classes 0, 2, 6, 8, 9).

Inputs are flat vectors of 64 pixels (``in_shape = (1, 8, 8)``), standardised with the mean and
standard deviation of the meta-training classes' images. Labels travel as a ``(n, 1)`` float
column holding integers (``out_shape = (1,)``), the layout ``LOSSES["cross_entropy"]`` expects.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import numpy as np
import torch

from metasym.errors import MetasymError
from tasks.base import TaskBatch, TaskFamily, check_sizes

if TYPE_CHECKING:
    from sympy.combinatorics import PermutationGroup

__all__ = ["D4_ORDER", "AugDigitsTasks", "d4_pixel_permutations", "load_digits_with_labels"]

SIDE = 8
CLASSES = 10
D4_ORDER = 8


@cache
def load_digits_with_labels() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: images ``(1797, 64)`` (0..16) and labels ``(1797,)``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data.astype(np.float32), data.target.astype(np.int64)


def d4_pixel_permutations(side: int = SIDE) -> torch.Tensor:
    """The eight elements of D4 as gathers of a row-major ``side x side`` image.

    Row ``g`` is the index map of one element: ``x[..., perms[g]]`` is the image ``x`` moved by it.
    Element ``g = 4 f + r`` is a left-right flip if ``f = 1``, followed by ``r`` counter-clockwise
    quarter turns (``torch.rot90``); row 0 is the identity.

    Shape:
        returns ``(8, side * side)``, dtype ``long``.
    """
    check_sizes(side=side)
    grid = torch.arange(side * side).view(side, side)
    perms = []
    for f in (0, 1):
        flipped = grid.flip(-1) if f else grid
        for r in range(4):
            perms.append(torch.rot90(flipped, r, dims=(0, 1)).reshape(-1))
    return torch.stack(perms)  # (g, 64)


class AugDigitsTasks(TaskFamily):
    """``N``-way ``K``-shot digit classification with D4-transformed query images.

    Each task has exactly ``n_support = n_way * k_shot`` support and
    ``n_query = n_way * n_query_per_class`` query examples, grouped by label (label 0 first).
    ``sample`` fills in these counts when ``n_support`` / ``n_query`` are left out and refuses any
    other value with a ``MetasymError``, so that a ``MetaConfig`` cannot silently ask for a
    different number of shots than the family was built for.

    Args:
        n_way: classes per task ``N``, between 2 and 5 (each split holds 5 classes).
        k_shot: support images per class ``K`` (at least 1).
        n_query_per_class: query images per class (at least 1).
        seed: seed of the split of the ten classes into meta-training and meta-test halves
            (the default keeps 6 and 9 apart; see the module docstring).

    Shape:
        support_x ``(b, N*K, 64)``, support_y ``(b, N*K, 1)``; query_x ``(b, N*n_q, 64)``,
        query_y ``(b, N*n_q, 1)``.
    """

    def __init__(
        self, n_way: int = 5, k_shot: int = 1, n_query_per_class: int = 15, seed: int = 2
    ) -> None:
        check_sizes(n_way=n_way, k_shot=k_shot, n_query_per_class=n_query_per_class)
        per_split = CLASSES // 2
        if not 2 <= n_way <= per_split:
            raise MetasymError(
                f"n_way must lie between 2 and {per_split} (the ten digit classes are split "
                f"{per_split}/{per_split} into meta-training and meta-test classes); got {n_way}"
            )
        self.name = "aug_digits"
        self.loss = "cross_entropy"
        self.models = ("fewshot_msr_conv", "fewshot_maml_conv")
        self.in_shape = (1, SIDE, SIDE)
        self.out_shape = (1,)  # the label column; the models output n_way logits
        self.kernel_size = 3
        self.n_way, self.k_shot, self.n_query_per_class = n_way, k_shot, n_query_per_class

        # split the classes, then keep each class's images in a padded (classes, m, 64) pool
        images, labels = load_digits_with_labels()
        order = torch.randperm(CLASSES, generator=torch.Generator().manual_seed(seed))
        self.classes = {
            "train": order[:per_split].sort().values,
            "test": order[per_split:].sort().values,
        }
        x = torch.from_numpy(images)
        y = torch.from_numpy(labels)
        train_x = x[torch.isin(y, self.classes["train"])]
        mean, std = train_x.mean(), train_x.std()
        self.pools: dict[str, torch.Tensor] = {}
        self.pool_sizes: dict[str, torch.Tensor] = {}
        for split, cls in self.classes.items():
            members = [(x[y == c] - mean) / std for c in cls.tolist()]
            sizes = torch.tensor([len(m) for m in members])
            pool = torch.zeros(len(members), int(sizes.max()), SIDE * SIDE)
            for j, m in enumerate(members):
                pool[j, : len(m)] = m
            self.pools[split], self.pool_sizes[split] = pool, sizes
            need = k_shot + n_query_per_class
            if need > int(sizes.min()):
                raise MetasymError(
                    f"k_shot + n_query_per_class = {need} exceeds the {int(sizes.min())} images of "
                    f"the smallest {split} class; use at most {int(sizes.min())} images per class"
                )
        self.perms = d4_pixel_permutations(SIDE)

    @property
    def n_support(self) -> int:
        """Support examples per task, ``n_way * k_shot``."""
        return self.n_way * self.k_shot

    @property
    def n_query(self) -> int:
        """Query examples per task, ``n_way * n_query_per_class``."""
        return self.n_way * self.n_query_per_class

    def sample(
        self,
        num_tasks: int,
        n_support: int | None = None,
        n_query: int | None = None,
        *,
        generator: torch.Generator,
        split: str = "train",
    ) -> TaskBatch:
        """Draw ``num_tasks`` tasks; ``n_support``/``n_query`` default to the family's counts.

        Raises:
            MetasymError: ``n_support`` is not ``n_way * k_shot`` or ``n_query`` is not
                ``n_way * n_query_per_class``.
        """
        n_support = self.n_support if n_support is None else n_support
        n_query = self.n_query if n_query is None else n_query
        if n_support != self.n_support:
            raise MetasymError(
                f"n_support = {n_support!r}, but {self.n_way}-way {self.k_shot}-shot tasks hold "
                f"n_way * k_shot = {self.n_support} support examples; set n_support to "
                f"{self.n_support} or change k_shot"
            )
        if n_query != self.n_query:
            raise MetasymError(
                f"n_query = {n_query!r}, but these tasks hold n_way * n_query_per_class = "
                f"{self.n_query} query examples; set n_query to {self.n_query} or change "
                "n_query_per_class"
            )
        return super().sample(num_tasks, n_support, n_query, generator=generator, split=split)

    def _sample(
        self, b: int, n_support: int, n_query: int, generator: torch.Generator, split: str
    ) -> TaskBatch:
        pool, sizes = self.pools[split], self.pool_sizes[split]
        n_way, k, q = self.n_way, self.k_shot, self.n_query_per_class

        # a random choice and order of classes per task: label j is class ways[:, j]
        ways = torch.rand(b, len(sizes), generator=generator).argsort(dim=1)[:, :n_way]  # (b, N)

        # k + q distinct images per (task, label); padding slots sort last
        scores = torch.rand(b, n_way, pool.shape[1], generator=generator)
        slots = torch.arange(pool.shape[1])
        scores = torch.where(slots < sizes[ways].unsqueeze(-1), scores, 2.0)
        picks = scores.argsort(dim=-1)[..., : k + q]  # (b, N, k + q)
        x = pool[ways.unsqueeze(-1), picks]  # (b, N, k + q, 64)

        # one uniform D4 element per query image
        g = torch.randint(D4_ORDER, (b, n_way, q), generator=generator)
        query = torch.gather(x[:, :, k:], -1, self.perms[g])  # (b, N, q, 64)

        labels = torch.arange(n_way, dtype=torch.float32).view(1, n_way, 1, 1)
        support_y = labels.expand(b, n_way, k, 1).reshape(b, n_support, 1)
        query_y = labels.expand(b, n_way, q, 1).reshape(b, n_query, 1)
        support_x = x[:, :, :k].reshape(b, n_support, SIDE * SIDE)
        return TaskBatch(support_x, support_y, query.reshape(b, n_query, SIDE * SIDE), query_y)

    def true_partition(self) -> torch.Tensor:
        raise NotImplementedError(
            "aug_digits is a classification family: no single linear map generates its tasks, so "
            "there is no weight-tying partition; use pixel_group() for the hidden symmetry"
        )

    def true_group(self) -> PermutationGroup | None:
        """``None``: the tasks are not linear maps; see ``pixel_group`` for the hidden D4."""
        return None

    def pixel_group(self) -> PermutationGroup:
        """The hidden group: D4 acting on the 64 row-major pixels (order 8)."""
        from metasym.groups import grid_dihedral

        return grid_dihedral(SIDE)
