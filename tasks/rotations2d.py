"""Lifting group convolutions of square images under C4 or D4, with zero padding.

Each task draws ``c`` random 3x3 filters ``f_c`` and maps a ``1 x n x n`` image to ``c |G|`` maps
of ``n x n``, one per filter and group element (``metasym.gconv``):

    y[c, g](q) = sum_u f_c(g^-1 u) x(q + u)       (u in {-1, 0, 1}^2, zero outside the image)

``G`` is ``C4`` (quarter turns about the grid's centre, ``|G| = 4``) or ``D4`` (also reflections,
``|G| = 8``). Both act on the pixels of an ``n x n`` grid as exact permutations and map the
outside of the grid to itself, so zero padding keeps the map exactly equivariant: rotating the
input by ``h`` moves every output map by ``h`` and sends channel ``(c, g)`` to ``(c, h g)``.

Inputs are ``N(0, 1)`` pixels (``inputs="random"``) or scikit-learn's 8x8 handwritten digits
placed in the centre of the frame (``inputs="digits"``), standardized with the mean and standard
deviation of the training frames; training and test tasks use disjoint images. Filters are drawn
``N(0, sigma^2)`` with ``sigma`` chosen so that targets have mean square about 1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sympy.combinatorics import PermutationGroup

from metasym.errors import MetasymError
from metasym.gconv import (
    POINT_GROUPS,
    kernel_tap_index,
    lift_filters,
    multiplication_table,
    pixel_permutation,
)
from metasym.groups import layer_group
from tasks.base import TaskBatch, TaskFamily, check_sizes
from tasks.digits import load_digit_images

__all__ = ["INPUTS", "RotationTasks"]

INPUTS = ("random", "digits")
"""The input distributions: ``N(0, 1)`` pixels, or real digit images."""

KERNEL = 3
DIGIT_SIDE = 8


class RotationTasks(TaskFamily):
    """C4 or D4 lifting convolutions of ``size x size`` images with ``out_channels`` filters a task.

    Args:
        group: ``"c4"`` or ``"d4"``.
        inputs: ``"random"`` or ``"digits"``.
        out_channels: filters ``c`` per task; the output has ``c |G|`` channels.
        size: side ``n`` of the images (at least 3; at least 8 for digits).
        test_fraction: share of the digit images reserved for test tasks.
        seed: seed of the train/test split of the digit images.

    Shape:
        inputs ``(n_ex, n * n)`` (one channel), outputs ``(n_ex, c |G| n n)`` in row-major
        ``(c, g, y, x)`` order.
    """

    def __init__(
        self,
        group: str = "c4",
        inputs: str = "random",
        out_channels: int = 2,
        size: int = 15,
        test_fraction: float = 0.3,
        seed: int = 0,
    ) -> None:
        if group not in POINT_GROUPS:
            raise MetasymError(
                f"unknown group {group!r} for rotations2d; valid groups: "
                f"{', '.join(sorted(POINT_GROUPS))}"
            )
        if inputs not in INPUTS:
            raise MetasymError(
                f"unknown inputs {inputs!r} for rotations2d; valid inputs: {', '.join(INPUTS)}"
            )
        check_sizes(out_channels=out_channels, size=size)
        minimum = DIGIT_SIDE if inputs == "digits" else KERNEL
        if size < minimum:
            raise MetasymError(f"size must be at least {minimum} for {inputs} inputs; got {size}")
        if not 0.0 < test_fraction < 1.0:
            raise MetasymError(
                f"test_fraction must lie strictly between 0 and 1; got {test_fraction}"
            )
        self.name = "rotations2d"
        self.models = ("msr_conv", "gconv", "conv2d", "dense")
        self.point_group = group
        self.group_order = POINT_GROUPS[group]
        self.inputs = inputs
        self.out_channels = out_channels
        self.size = size
        self.in_shape = (1, size, size)
        self.out_shape = (out_channels * self.group_order, size, size)
        self.kernel_size = KERNEL
        self.conv_padding = None  # zero padding: the circular `conv` model does not apply
        self.filter_size = out_channels * KERNEL * KERNEL
        self._tap_index = kernel_tap_index(group, KERNEL)  # (g, t)
        self.images: dict[str, torch.Tensor] = {}
        self.image_ids: dict[str, torch.Tensor] = {}
        if inputs == "digits":
            self._load_digits(test_fraction, seed)
            second_moment = self.images["train"].pow(2).mean(0).view(1, 1, size, size)
        else:
            second_moment = torch.ones(1, 1, size, size)
        # E[y^2] averaged over outputs = sigma^2 * mean_q sum_u E[x(q + u)^2]
        window = F.conv2d(second_moment, torch.ones(1, 1, KERNEL, KERNEL), padding=KERNEL // 2)
        self.filter_std = float(window.mean().rsqrt())

    def _load_digits(self, test_fraction: float, seed: int) -> None:
        digits = torch.from_numpy(load_digit_images()).view(-1, DIGIT_SIDE, DIGIT_SIDE)
        n = self.size
        start = (n - DIGIT_SIDE) // 2
        frames = torch.zeros(len(digits), n, n)
        frames[:, start : start + DIGIT_SIDE, start : start + DIGIT_SIDE] = digits
        frames = frames.view(len(digits), n * n)
        order = torch.randperm(len(frames), generator=torch.Generator().manual_seed(seed))
        n_test = int(round(test_fraction * len(frames)))
        train, test = frames[order[n_test:]], frames[order[:n_test]]
        mean, std = train.mean(), train.std()
        self.images = {"train": (train - mean) / std, "test": (test - mean) / std}
        self.image_ids = {"train": order[n_test:], "test": order[:n_test]}

    # -- sampling -------------------------------------------------------------------------------

    def filters(self, b: int, generator: torch.Generator) -> torch.Tensor:
        """Random base filters for ``b`` tasks. Shape: ``(b, c, 3, 3)``."""
        shape = (b, self.out_channels, KERNEL, KERNEL)
        return self.filter_std * torch.randn(shape, generator=generator)

    def apply(self, filters: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Each task's lifting convolution applied to its inputs.

        Shape:
            filters: ``(b, c, 3, 3)``; x: ``(b, n_ex, n * n)``; returns ``(b, n_ex, c |G| n n)``.
        """
        b, n_ex, _ = x.shape
        kernels = lift_filters(filters, self.point_group)  # (b, c g, 1, 3, 3)
        # one conv group per task: (n_ex, b, n, n) -> (n_ex, b c g, n, n)
        images = x.transpose(0, 1).reshape(n_ex, b, self.size, self.size)
        out = F.conv2d(images, kernels.flatten(0, 1), padding=KERNEL // 2, groups=b)
        return out.view(n_ex, b, -1).transpose(0, 1)

    def _inputs(self, b: int, n: int, generator: torch.Generator, split: str) -> torch.Tensor:
        if self.inputs == "random":
            return torch.randn(b, n, self.in_features, generator=generator)
        pool = self.images[split]
        if n > len(pool):
            raise MetasymError(
                f"n_support + n_query = {n} exceeds the {len(pool)} {split} images of rotations2d; "
                f"use at most {len(pool)} examples per task"
            )
        idx = torch.rand(b, len(pool), generator=generator).argsort(dim=1)[:, :n]  # distinct
        return pool[idx]  # (b, n, n * n)

    def _sample(
        self, b: int, n_support: int, n_query: int, generator: torch.Generator, split: str
    ) -> TaskBatch:
        filters = self.filters(b, generator)
        x = self._inputs(b, n_support + n_query, generator, split)
        y = self.apply(filters, x)
        return TaskBatch(x[:, :n_support], y[:, :n_support], x[:, n_support:], y[:, n_support:])

    # -- ground truth ---------------------------------------------------------------------------

    def true_partition(self) -> torch.Tensor:
        """Filter tap ``c * 9 + t`` read by each weight, ``-1`` where the map has no weight.

        Output ``(c, g, q)`` reads input pixel ``q + u`` with tap ``g^-1 u`` of filter ``c``; taps
        that would read outside the image are absent (zero padding).

        Shape:
            ``(c |G| n^2, n^2)``, dtype long.
        """
        n, m = self.size, KERNEL // 2
        taps = self._tap_index.numpy()  # (g, t)
        order = self.group_order
        part = np.full((self.out_channels, order, n, n, n * n), -1, dtype=np.int64)
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        for t in range(KERNEL * KERNEL):
            dy, dx = divmod(t, KERNEL)
            py, px = ys + dy - m, xs + dx - m
            inside = (py >= 0) & (py < n) & (px >= 0) & (px < n)
            qy, qx = ys[inside], xs[inside]
            p = py[inside] * n + px[inside]
            for c in range(self.out_channels):
                for g in range(order):
                    part[c, g, qy, qx, p] = c * KERNEL * KERNEL + taps[g, t]
        return torch.from_numpy(part.reshape(self.out_features, n * n))

    def output_permutation(self, element: int) -> np.ndarray:
        """Where element ``h`` sends each output unit: ``(c, g, q) -> (c, h g, h q)``.

        Shape:
            ``(c |G| n^2,)``, dtype int64.
        """
        n2 = self.size * self.size
        pix = pixel_permutation(self.point_group, element, self.size)
        table = multiplication_table(self.point_group)
        c, g, q = np.unravel_index(
            np.arange(self.out_features), (self.out_channels, self.group_order, n2)
        )
        return ((c * self.group_order + table[element, g]) * n2 + pix[q]).astype(np.int64)

    def true_group(self) -> PermutationGroup | None:
        """C4 or D4 as a layer group: pixels move by ``h``, outputs by ``(c, g, q) -> (c, hg, hq)``.

        Generated by the quarter turn (element 1) and, for D4, the flip (element 4).
        """
        generators = [1] if self.point_group == "c4" else [1, 4]
        out_perms = [self.output_permutation(h) for h in generators]
        in_perms = [pixel_permutation(self.point_group, h, self.size) for h in generators]
        return layer_group(out_perms, in_perms)
