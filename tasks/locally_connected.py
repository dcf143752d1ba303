"""Low-rank locally connected tasks: local, but with no exact weight sharing.

Each output position ``o`` applies its own 3-tap filter to inputs ``o .. o+2`` (as a valid 1D
convolution would), but the filters differ between positions: the filter of position ``o`` is row
``o`` of ``C B``, where ``C = softmax(randn(o, rank))`` is fixed for the family and ``B ~ N(0, I)``
of shape ``(rank, kernel_size)`` is drawn per task. ``rank = 1`` recovers a convolution; larger
ranks move further from any symmetry (the rank-2 and rank-5 families of arXiv 2007.02933).
"""

from __future__ import annotations

import torch
from sympy.combinatorics import PermutationGroup

from tasks.base import LinearTaskFamily, check_sizes

__all__ = ["LocallyConnected1dTasks"]


class LocallyConnected1dTasks(LinearTaskFamily):
    """Locally connected 1D maps whose filters span a random rank-``rank`` subspace.

    Args:
        n_in: number of inputs ``i``; outputs ``o = i - kernel_size + 1``.
        kernel_size: taps per output position.
        rank: dimension of the per-task filter basis.
        seed: seed of the family's fixed connectivity matrix ``C``.
    """

    kernel_size: int

    def __init__(self, n_in: int = 70, kernel_size: int = 3, rank: int = 2, seed: int = 0) -> None:
        check_sizes(n_in=n_in, kernel_size=kernel_size, rank=rank)
        self.kernel_size = kernel_size
        self.filter_size = rank * kernel_size  # the free entries of B
        self.rank = rank
        n_out = n_in - kernel_size + 1
        self.in_shape = (n_in,)
        self.out_shape = (n_out,)
        self.name = f"locally_connected1d_rank{rank}"
        self.conv_padding = None
        gen = torch.Generator().manual_seed(seed)
        self.connectivity = torch.softmax(torch.randn(n_out, rank, generator=gen), dim=1)  # (o, r)

    def _weights(self, b: int, generator: torch.Generator) -> torch.Tensor:
        basis = torch.randn(b, self.rank, self.kernel_size, generator=generator)  # (b, r, j)
        filters = torch.einsum("or,brj->boj", self.connectivity, basis)  # (b, o, j)
        n_out, n_in = self.out_features, self.in_features
        w = filters.new_zeros(b, n_out, n_in)
        o = torch.arange(n_out)
        for j in range(self.kernel_size):
            w[:, o, o + j] = filters[:, :, j]
        return w

    def true_partition(self) -> torch.Tensor:
        # every band position carries its own value: nothing is tied
        o = torch.arange(self.out_features)[:, None]
        i = torch.arange(self.in_features)[None, :]
        offset = i - o
        band = (offset >= 0) & (offset < self.kernel_size)
        ids = o * self.kernel_size + offset
        return torch.where(band, ids, -1)

    def true_group(self) -> PermutationGroup | None:
        return None
