"""Real images under a hidden group: scikit-learn's handwritten digits through a lifting p4 map.

Inputs are the 1797 8x8 digit images that ship with scikit-learn (no download), standardized with
the mean and standard deviation of the training images. Each task draws a 3x3 filter
``f ~ N(0, I/9)`` (so targets have roughly unit scale) and maps an image to its lifting group
convolution over the translations of the 8x8 torus and the four 90-degree rotations:

    y[r, q] = sum_u f(u) x(q + R^r u)        (indices mod 8, u in {-1, 0, 1}^2)

giving 4 output maps of 8x8. The map is exactly equivariant to p4 acting on the torus
(``metasym.groups.lifting_p4``). Training and test tasks draw their images from disjoint parts of
the data set.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from sympy.combinatorics import PermutationGroup

from metasym.errors import MetasymError
from tasks.base import LinearTaskFamily, weights_from_partition

__all__ = ["DigitsP4Tasks", "load_digit_images", "rotate_offset"]

SIDE = 8
ROTATIONS = 4


def rotate_offset(dy: int, dx: int, r: int) -> tuple[int, int]:
    """Rotate a grid offset ``r`` quarter turns; one turn maps ``(dy, dx)`` to ``(dx, -dy)``."""
    for _ in range(r % 4):
        dy, dx = dx, -dy
    return dy, dx


@cache
def load_digit_images() -> np.ndarray:
    """The digit images bundled with scikit-learn. Shape: ``(1797, 64)``, values 0..16."""
    from sklearn.datasets import load_digits

    return load_digits().data.astype(np.float32)


class DigitsP4Tasks(LinearTaskFamily):
    """Lifting p4 convolutions of real digit images with a random 3x3 filter per task.

    Args:
        test_fraction: share of the images reserved for test tasks.
        seed: seed of the train/test split of the images.
        random_shift: place each image at a random translation of the torus. Digits leave their
            border pixels (nearly) blank, so without shifts the weights that read those pixels
            are barely constrained by any task and the learned sharing there stays arbitrary;
            shifting keeps the inputs real digits and, as the map is equivariant, the same tasks.
    """

    def __init__(
        self, test_fraction: float = 0.3, seed: int = 0, random_shift: bool = True
    ) -> None:
        if not 0.0 < test_fraction < 1.0:
            raise MetasymError(
                f"test_fraction must lie strictly between 0 and 1; got {test_fraction}"
            )
        self.name = "digits_p4"
        self.random_shift = random_shift
        self.in_shape = (1, SIDE, SIDE)
        self.out_shape = (ROTATIONS, SIDE, SIDE)
        self.kernel_size = 3
        self.filter_size = 9
        self.models = ("msr_fc", "dense", "conv")
        self.conv_padding = (1, 1, 1, 1)
        images = torch.from_numpy(load_digit_images())
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        n_test = int(round(test_fraction * len(images)))
        train, test = images[order[n_test:]], images[order[:n_test]]
        mean, std = train.mean(), train.std()
        self.images = {"train": (train - mean) / std, "test": (test - mean) / std}
        self.image_ids = {"train": order[n_test:], "test": order[:n_test]}
        self._partition = self._build_partition()

    def _build_partition(self) -> torch.Tensor:
        part = torch.full((ROTATIONS, SIDE, SIDE, SIDE * SIDE), -1, dtype=torch.long)
        taps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        ys, xs = torch.meshgrid(torch.arange(SIDE), torch.arange(SIDE), indexing="ij")
        for r in range(ROTATIONS):
            for tap, (dy, dx) in enumerate(taps):
                ry, rx = rotate_offset(dy, dx, r)
                p = ((ys + ry) % SIDE) * SIDE + (xs + rx) % SIDE  # (8, 8) input read by q
                part[r, ys, xs, p] = tap
        return part.reshape(ROTATIONS * SIDE * SIDE, SIDE * SIDE)  # (o, i)

    def _weights(self, b: int, generator: torch.Generator) -> torch.Tensor:
        filters = torch.randn(b, 9, generator=generator) / 3.0
        return weights_from_partition(self._partition, filters)

    def _inputs(self, b: int, n: int, generator: torch.Generator, split: str) -> torch.Tensor:
        pool = self.images[split]
        if n > len(pool):
            raise MetasymError(
                f"n_support + n_query = {n} exceeds the {len(pool)} {split} images of digits_p4; "
                f"use at most {len(pool)} examples per task"
            )
        # n distinct images per task
        idx = torch.rand(b, len(pool), generator=generator).argsort(dim=1)[:, :n]
        x = pool[idx]  # (b, n, 64)
        if self.random_shift:
            shifts = torch.randint(0, SIDE, (b, n, 2), generator=generator)
            rows = (torch.arange(SIDE) + shifts[..., :1]) % SIDE  # (b, n, 8): source row per row
            cols = (torch.arange(SIDE) + shifts[..., 1:]) % SIDE
            pixel = rows[..., :, None] * SIDE + cols[..., None, :]  # (b, n, 8, 8)
            x = torch.gather(x, 2, pixel.reshape(b, n, SIDE * SIDE))
        return x

    def true_partition(self) -> torch.Tensor:
        return self._partition.clone()

    def true_group(self) -> PermutationGroup | None:
        from metasym.groups import lifting_p4

        return lifting_p4(SIDE)
