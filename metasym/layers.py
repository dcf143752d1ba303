"""Layers whose weights are reparameterized for meta-learning, and the baselines beside them.

MSR (Meta-Learning Symmetries by Reparameterization, arXiv 2007.02933) writes a layer's weight as

    vec(W) = U v,        W = reshape(U v) of shape (o, i)

where the *sharing matrix* ``U`` (``(o*i, k)``) is meta-learned across tasks and the *filter* ``v``
(``(k,)``) is adapted to each task in the inner loop. When ``U`` ties weight positions along the
orbits of a group, every ``W`` it can produce is equivariant to that group.

Every layer states which of its parameters the inner loop adapts (``fast_parameters``); the rest are
meta parameters learned only by the outer loop. A torch layer without that attribute is treated as
entirely fast, as in MAML (``split_parameters``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from metasym.errors import MetasymError

__all__ = [
    "Conv",
    "Dense",
    "LocallyConnected1d",
    "SharedConv2d",
    "SharedLinear",
    "SharingTensor",
    "fast_parameter_names",
    "split_parameters",
]

SharingTensor = torch.Tensor
"""A sharing matrix ``U`` of shape ``(o*i, k)``; row ``o*in_features + i`` holds weight (o, i)."""


def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise MetasymError(f"{name} must be a positive integer; got {value!r}")


class SharedLinear(nn.Module):
    """A linear layer with meta-learned weight sharing, ``W = reshape(U v)`` (arXiv 2007.02933).

    Args:
        in_features: inputs ``i``.
        out_features: outputs ``o``.
        latent: filter size ``k`` (columns of ``U``); at most ``o*i``.
        bias: add a bias ``b = U_b v_b`` tied the same way (``U_b`` of shape ``(o, k)``).
        sharing: a fixed sharing matrix to use instead of a learned one; it is stored as a buffer,
            so the layer then has only fast parameters (a layer with a discovered symmetry).

    Shape:
        input ``(n, i)``, output ``(n, o)``; ``U``: ``(o*i, k)``, ``v``: ``(k,)``.

    Initialisation: ``U ~ N(0, 0.01^2)``, ``v ~ N(0, 1/o^2)``.
    """

    fast_parameters = ("v", "bias_v")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        latent: int,
        bias: bool = False,
        sharing: SharingTensor | None = None,
    ) -> None:
        super().__init__()
        _check_positive(in_features=in_features, out_features=out_features, latent=latent)
        if latent > in_features * out_features:
            raise MetasymError(
                f"latent size {latent} exceeds out*in = {out_features * in_features}; "
                f"choose 1 <= latent <= {out_features * in_features}"
            )
        self.in_features, self.out_features, self.latent = in_features, out_features, latent
        rows = out_features * in_features
        if sharing is None:
            self.U = nn.Parameter(0.01 * torch.randn(rows, latent))
        else:
            if tuple(sharing.shape) != (rows, latent):
                raise MetasymError(
                    f"sharing matrix has shape {tuple(sharing.shape)}; expected (o*i, k) = "
                    f"({rows}, {latent})"
                )
            self.register_buffer("U", sharing.detach().clone().float())
        self.v = nn.Parameter(torch.randn(latent) / out_features)
        self.bias_U: nn.Parameter | None = None
        self.bias_v: nn.Parameter | None = None
        if bias:
            self.bias_U = nn.Parameter(0.01 * torch.randn(out_features, latent))
            self.bias_v = nn.Parameter(torch.randn(latent) / out_features)

    def weight(self) -> torch.Tensor:
        """The weight ``reshape(U v)``. Shape: ``(o, i)``."""
        # v U^T rather than U v: under vmap over tasks the result is then laid out task-major,
        # which saves a transposed copy of b * o * i entries per step
        return (self.v @ self.U.T).view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise MetasymError(
                f"SharedLinear expects inputs with {self.in_features} features; got shape "
                f"{tuple(x.shape)}"
            )
        y = x @ self.weight().T
        if self.bias_U is not None and self.bias_v is not None:
            y = y + self.bias_U @ self.bias_v
        return y

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, latent={self.latent}"


class SharedConv2d(nn.Module):
    """A 2D convolution whose whole kernel tensor is ``reshape(U v)`` (arXiv 2007.02933).

    ``U`` spans all of ``(c_out, c_in, s, s)``, so it can tie kernel entries across output channels
    (for example the four rotated copies of one filter in a rotation-lifting layer).

    Args:
        in_channels: ``c_in``.
        out_channels: ``c_out``.
        kernel_size: side ``s`` of the square kernel.
        latent: filter size ``k``.
        padding: ``F.pad`` widths applied (circularly) before a valid convolution, or ``None``.

    Shape:
        input ``(n, c_in, h, w)``; ``U``: ``(c_out*c_in*s*s, k)``, ``v``: ``(k,)``.
    """

    fast_parameters = ("v",)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        latent: int,
        padding: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        _check_positive(
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=kernel_size,
            latent=latent,
        )
        self.kernel_shape = (out_channels, in_channels, kernel_size, kernel_size)
        rows = math.prod(self.kernel_shape)
        if latent > rows:
            raise MetasymError(f"latent size {latent} exceeds the {rows} kernel entries")
        self.padding = padding
        self.U = nn.Parameter(0.01 * torch.randn(rows, latent))
        self.v = nn.Parameter(torch.randn(latent) / out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = (self.U @ self.v).view(self.kernel_shape)  # (c_out, c_in, s, s)
        if self.padding is not None:
            x = F.pad(x, self.padding, mode="circular")
        return F.conv2d(x, kernel)


class Dense(nn.Module):
    """A plain fully connected map ``y = W x`` (+ bias); all parameters are fast (MAML-FC)."""

    fast_parameters = ("weight", "bias")

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        _check_positive(in_features=in_features, out_features=out_features)
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / math.sqrt(in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Conv(nn.Module):
    """A 1D or 2D convolution on flat vectors, with the task's kernel size (MAML-conv baseline).

    Args:
        in_shape: ``(L,)`` or ``(c, L)`` for 1D, ``(c, h, w)`` for 2D.
        out_shape: the output's shape, with the channel count first for 2D.
        kernel_size: taps (1D) or kernel side (2D).
        padding: ``F.pad`` widths applied circularly before the valid convolution, or ``None``.
    """

    fast_parameters = ("weight",)

    def __init__(
        self,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        kernel_size: int,
        padding: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.in_shape = in_shape if len(in_shape) != 1 else (1, in_shape[0])
        self.out_shape = out_shape if len(out_shape) != 1 else (1, out_shape[0])
        self.padding = padding
        dims = len(self.in_shape) - 1
        if dims not in (1, 2) or len(self.out_shape) != len(self.in_shape):
            raise MetasymError(
                "conv baseline needs 1D or 2D shapes of equal rank; "
                f"got in {in_shape}, out {out_shape}"
            )
        c_in, c_out = self.in_shape[0], self.out_shape[0]
        fan_in = c_in * kernel_size**dims
        self.weight = nn.Parameter(
            torch.randn(c_out, c_in, *([kernel_size] * dims)) / math.sqrt(fan_in)
        )
        self._conv = F.conv1d if dims == 1 else F.conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        h = x.reshape(-1, *self.in_shape)
        if self.padding is not None:
            h = F.pad(h, self.padding, mode="circular")
        out = self._conv(h, self.weight)
        if tuple(out.shape[1:]) != self.out_shape:
            raise MetasymError(
                f"conv baseline produced shape {tuple(out.shape[1:])}, but the task expects "
                f"{self.out_shape}; check kernel_size and padding"
            )
        return out.reshape(*lead, -1)


class LocallyConnected1d(nn.Module):
    """Each output position has its own filter over inputs ``o .. o+k-1`` (MAML-LC baseline).

    Shape:
        input ``(n, i)``, output ``(n, i - k + 1)``; weight ``(o, k)``.
    """

    fast_parameters = ("weight",)

    def __init__(self, in_features: int, kernel_size: int) -> None:
        super().__init__()
        _check_positive(in_features=in_features, kernel_size=kernel_size)
        if kernel_size > in_features:
            raise MetasymError(f"kernel_size {kernel_size} exceeds in_features {in_features}")
        self.kernel_size = kernel_size
        n_out = in_features - kernel_size + 1
        self.weight = nn.Parameter(torch.randn(n_out, kernel_size) / math.sqrt(kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        windows = x.unfold(-1, self.kernel_size, 1)  # (..., o, k)
        return (windows * self.weight).sum(-1)


def fast_parameter_names(model: nn.Module) -> list[str]:
    """Names (as in ``named_parameters``) of the parameters the inner loop adapts.

    A module that defines ``fast_parameters`` declares them; the parameters of any other module
    are all fast (MAML semantics for plain torch layers).
    """
    names: list[str] = []
    for prefix, module in model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        declared: Iterable[str] = getattr(module, "fast_parameters", own.keys())
        for name in declared:
            if own.get(name) is not None:
                names.append(f"{prefix}.{name}" if prefix else name)
    return names


def split_parameters(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a model's parameters into ``(fast, meta)`` dictionaries keyed by parameter name."""
    fast_names = set(fast_parameter_names(model))
    fast: dict[str, torch.Tensor] = {}
    meta: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        (fast if name in fast_names else meta)[name] = p
    return fast, meta
