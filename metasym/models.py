"""Build the model a task family is meta-trained with, by name.

Each entry of ``MODEL_BUILDERS`` maps a name to a function ``(family, **options) -> nn.Module``;
``build_model`` looks the name up and turns bad options into a ``MetasymError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from metasym import gconv
from metasym.errors import MetasymError
from metasym.fewshot import build_maml_conv, build_msr_conv
from metasym.layers import Conv, Dense, LocallyConnected1d, SharedLinear
from tasks.base import TaskFamily

__all__ = ["MODELS", "MODEL_BUILDERS", "build_model"]

ModelBuilder = Callable[..., nn.Module]


def _msr_fc(family: TaskFamily, latent: int | None = None, bias: bool = False) -> nn.Module:
    """One ``SharedLinear``; ``latent=None`` uses the family's ``filter_size``."""
    k = family.filter_size if latent is None else latent
    return SharedLinear(family.in_features, family.out_features, k, bias=bias)


def _dense(family: TaskFamily, bias: bool = False) -> nn.Module:
    """MAML-FC: a fully connected layer, all of it fast."""
    return Dense(family.in_features, family.out_features, bias=bias)


def _conv(family: TaskFamily) -> nn.Module:
    """MAML-conv: a convolution with the task's kernel size and padding."""
    kernel = family.kernel_size
    if not isinstance(kernel, int):
        raise MetasymError(
            f"task {family.name!r} has no convolution kernel; model 'conv' needs one"
        )
    return Conv(family.in_shape, family.out_shape, kernel, family.conv_padding)


def _lc(family: TaskFamily) -> nn.Module:
    """MAML-LC: a locally connected 1D layer."""
    kernel = family.kernel_size
    if len(family.in_shape) != 1 or not isinstance(kernel, int):
        raise MetasymError(
            f"model 'lc' is a 1D locally connected layer; task {family.name!r} has input shape "
            f"{family.in_shape}"
        )
    if family.conv_padding is not None:
        raise MetasymError(f"model 'lc' has no wrap-around; task {family.name!r} is circular")
    return LocallyConnected1d(family.in_features, kernel)


MODEL_BUILDERS: dict[str, ModelBuilder] = {
    "msr_fc": _msr_fc,
    "dense": _dense,
    "conv": _conv,
    "lc": _lc,
    "msr_conv": gconv.build_msr_conv,
    "gconv": gconv.build_gconv,
    "conv2d": gconv.build_conv2d,
    "fewshot_maml_conv": build_maml_conv,
    "fewshot_msr_conv": build_msr_conv,
}

MODELS = ("msr_fc", "dense", "conv", "lc")
"""The single-layer models of the 1D regression families (each family lists its own in
``TaskFamily.models``, which ``baselines=all`` runs): ``msr_fc``, ``dense``, ``conv``,
``lc``."""


def build_model(name: str, family: TaskFamily, **options: Any) -> nn.Module:
    """Build model ``name`` for ``family``'s shapes.

    Args:
        name: a key of ``MODEL_BUILDERS``.
        family: the task family (gives sizes, kernel size and padding).
        **options: passed to the builder (``latent`` and ``bias`` for ``msr_fc``).
    """
    if name not in MODEL_BUILDERS:
        raise MetasymError(f"unknown model {name!r}; valid models: {', '.join(MODEL_BUILDERS)}")
    if name not in family.models:
        raise MetasymError(
            f"model {name!r} does not fit task {family.name!r}; models for it: "
            f"{', '.join(family.models)}"
        )
    try:
        return MODEL_BUILDERS[name](family, **options)
    except TypeError as err:
        raise MetasymError(f"bad options {sorted(options)} for model {name!r}: {err}") from err
