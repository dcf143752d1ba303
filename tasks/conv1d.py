"""One-dimensional convolution tasks: the translation-symmetric family of arXiv 2007.02933.

Each task is a 1D convolution with its own filter ``f ~ N(0, I)`` of ``kernel_size`` taps:
``y_o = sum_j f_j x_{o+j}``. With ``circular=False`` the convolution is *valid* (``n`` inputs,
``n - kernel_size + 1`` outputs; the edges break exact translation symmetry). With
``circular=True`` indices wrap around (``n -> n``) and the layer is exactly equivariant to the
cyclic group ``C_n`` acting on inputs and outputs alike.
"""

from __future__ import annotations

import torch
from sympy.combinatorics import Permutation, PermutationGroup

from tasks.base import LinearTaskFamily, check_sizes, weights_from_partition

__all__ = ["Conv1dTasks"]


class Conv1dTasks(LinearTaskFamily):
    """Valid or circular 1D convolutions with a random filter per task.

    Args:
        n_in: number of inputs ``i``.
        kernel_size: filter taps ``k``.
        circular: wrap around (``o = i``) instead of a valid convolution (``o = i - k + 1``).
    """

    kernel_size: int

    def __init__(self, n_in: int = 70, kernel_size: int = 3, circular: bool = False) -> None:
        check_sizes(n_in=n_in, kernel_size=kernel_size)
        if not circular and kernel_size > n_in:
            from metasym.errors import MetasymError

            raise MetasymError(
                f"kernel_size {kernel_size} exceeds n_in {n_in} for a valid convolution"
            )
        self.circular = circular
        self.kernel_size = kernel_size
        self.filter_size = kernel_size
        n_out = n_in if circular else n_in - kernel_size + 1
        self.in_shape = (n_in,)
        self.out_shape = (n_out,)
        self.name = "conv1d_circular" if circular else "conv1d"
        # conv baseline: pad on the right so that output o reads inputs o .. o+k-1 (mod n)
        self.conv_padding = (0, kernel_size - 1) if circular else None
        if circular:
            self.models = ("msr_fc", "dense", "conv")  # lc has no wrap-around
        self._partition = self._build_partition()

    def _build_partition(self) -> torch.Tensor:
        o = torch.arange(self.out_features)[:, None]
        i = torch.arange(self.in_features)[None, :]
        offset = i - o
        if self.circular:
            offset = offset % self.in_features
        return torch.where((offset >= 0) & (offset < self.kernel_size), offset, -1)  # (o, i)

    def _weights(self, b: int, generator: torch.Generator) -> torch.Tensor:
        filters = torch.randn(b, self.kernel_size, generator=generator)
        return weights_from_partition(self._partition, filters)

    def true_partition(self) -> torch.Tensor:
        return self._partition.clone()

    def true_group(self) -> PermutationGroup | None:
        if not self.circular:
            return None
        n = self.in_features
        # the same unit shift on outputs (points 0..n-1) and inputs (points n..2n-1)
        shift = [(p + 1) % n for p in range(n)] + [n + (p + 1) % n for p in range(n)]
        return PermutationGroup([Permutation(shift)])
