"""Build the model a task family is meta-trained with, by name."""

from __future__ import annotations

from torch import nn

from metasym.errors import MetasymError
from metasym.layers import Conv, Dense, LocallyConnected1d, SharedLinear
from tasks.base import TaskFamily

__all__ = ["MODELS", "build_model"]

MODELS = ("msr_fc", "dense", "conv", "lc")
"""``msr_fc``: one ``SharedLinear``; ``dense``: MAML-FC; ``conv``: MAML with the task's kernel size;
``lc``: MAML with a locally connected 1D layer."""


def build_model(
    name: str, family: TaskFamily, latent: int | None = None, bias: bool = False
) -> nn.Module:
    """A single-layer model for ``family``'s input and output sizes.

    Args:
        name: one of ``MODELS``.
        family: the task family (gives sizes, kernel size and padding).
        latent: filter size ``k`` of ``msr_fc``; ``None`` uses the family's ``filter_size``.
        bias: give ``msr_fc`` and ``dense`` a bias.
    """
    i, o = family.in_features, family.out_features
    if name == "msr_fc":
        return SharedLinear(i, o, family.filter_size if latent is None else latent, bias=bias)
    if name == "dense":
        return Dense(i, o, bias=bias)
    kernel = family.kernel_size
    if name == "conv":
        if not isinstance(kernel, int):
            raise MetasymError(
                f"task {family.name!r} has no convolution kernel; model 'conv' needs one"
            )
        return Conv(family.in_shape, family.out_shape, kernel, family.conv_padding)
    if name == "lc":
        if len(family.in_shape) != 1 or not isinstance(kernel, int):
            raise MetasymError(
                f"model 'lc' is a 1D locally connected layer; task {family.name!r} has input shape "
                f"{family.in_shape}"
            )
        if family.conv_padding is not None:
            raise MetasymError(f"model 'lc' has no wrap-around; task {family.name!r} is circular")
        return LocallyConnected1d(i, kernel)
    raise MetasymError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
