"""Small convolutional classifiers for few-shot tasks on 8x8 images: MAML-conv and MSR-conv.

Both networks have the same layout: three 3x3 convolutions with zero padding and ReLU (the first
two followed by 2x2 max pooling: 8x8 -> 4x4 -> 2x2), a global average over positions, and a
linear head to ``n_way`` logits. They differ in which parameters the inner loop adapts:

- ``ConvClassifier`` (MAML-conv): every parameter is fast.
- ``SharedConvClassifier`` (MSR-conv, arXiv 2007.02933): each convolution kernel is
  ``reshape(U v)`` over all of ``(c_out, c_in, 3, 3)``; ``U`` and the convolution biases are meta
  parameters, ``v`` and the head are fast. With ``c_out = |G| c`` output channels and
  ``k = c_out c_in 9 / |G|`` columns, ``U`` can hold a group convolution: the ``|G|`` transformed
  copies of ``c`` filters, tied (for D4, ``|G| = 8``). Adapting ``v`` then moves the filters
  without leaving the tied subspace, so a symmetry the outer loop built into ``U`` survives the
  inner loop.

Inputs are flat vectors of ``c_in * 8 * 8`` pixels (the ``TaskBatch`` layout); the output has one
logit per class, as ``metasym.meta.inner.LOSSES["cross_entropy"]`` expects.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metasym.errors import MetasymError
from metasym.layers import SharedConv2d

__all__ = [
    "ConvClassifier",
    "ScaledConv2d",
    "SharedConvClassifier",
    "ZeroPadSharedConv2d",
    "build_maml_conv",
    "build_msr_conv",
    "invariance_error",
]

LAYERS = 3
KERNEL = 3


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise MetasymError(f"{name} must be a positive integer; got {value!r}")


class ZeroPadSharedConv2d(SharedConv2d):
    """``SharedConv2d`` with zero ("same") padding and a He-scaled kernel at initialisation.

    Images have borders, so zero padding suits them better than the circular padding of
    ``SharedConv2d``. The kernel is ``reshape(U v)`` (arXiv 2007.02933) with
    ``U ~ N(0, 1/k)`` and ``v ~ N(0, 2/fan_in)``, so each kernel entry starts with variance
    ``2 / fan_in`` (``fan_in = c_in s^2``) and a stack of them neither explodes nor vanishes.

    Args:
        in_channels: ``c_in``.
        out_channels: ``c_out``.
        kernel_size: odd side ``s`` of the square kernel.
        latent: filter size ``k`` (columns of ``U``).

    Shape:
        input ``(n, c_in, h, w)``, output ``(n, c_out, h, w)``; ``U``: ``(c_out*c_in*s*s, k)``,
        ``v``: ``(k,)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, latent: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size, latent, padding=None)
        if kernel_size % 2 != 1:
            raise MetasymError(f"kernel_size must be odd for same padding; got {kernel_size}")
        fan_in = in_channels * kernel_size**2
        self.scale = math.sqrt(2.0 / (fan_in * latent))
        with torch.no_grad():
            self.U.normal_(0.0, 1.0)
            self.v.normal_(0.0, 1.0)

    def kernel(self) -> torch.Tensor:
        """The kernel ``reshape(U v)``. Shape: ``(c_out, c_in, s, s)``."""
        return (self.scale * (self.U @ self.v)).view(self.kernel_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel(), padding=self.kernel_shape[-1] // 2)


class ScaledConv2d(nn.Module):
    """A plain 3x3 convolution with zero padding whose kernel is ``sqrt(2 / fan_in) * weight``.

    ``weight ~ N(0, 1)``: the same parameter scale as ``ZeroPadSharedConv2d``'s ``U`` and ``v``,
    so that Adam and the inner SGD move both networks' parameters by comparable relative amounts.

    Shape:
        input ``(n, c_in, h, w)``, output ``(n, c_out, h, w)``; weight ``(c_out, c_in, s, s)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        _check_sizes(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size)
        if kernel_size % 2 != 1:
            raise MetasymError(f"kernel_size must be odd for same padding; got {kernel_size}")
        self.scale = math.sqrt(2.0 / (in_channels * kernel_size**2))
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.scale * self.weight, padding=self.weight.shape[-1] // 2)


class _Classifier(nn.Module):
    """The shared layout; subclasses build ``self.convs`` (modules mapping ``(n, c, h, w)``)."""

    convs: nn.ModuleList

    def __init__(self, in_shape: tuple[int, ...], n_way: int, channels: int) -> None:
        super().__init__()
        if len(in_shape) != 3 or in_shape[1] < 4 or in_shape[2] < 4:
            raise MetasymError(
                f"in_shape must be (channels, height, width) with sides of at least 4; got "
                f"{in_shape}"
            )
        _check_sizes(n_way=n_way, channels=channels)
        self.in_shape, self.n_way, self.channels = tuple(in_shape), n_way, channels
        self.conv_bias = nn.Parameter(torch.zeros(LAYERS, channels))
        self.head = nn.Linear(channels, n_way)
        # a zero head makes the initial logits equal: labels are permuted per task anyway
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average features. Shape: ``(n, c_in*h*w)`` -> ``(n, channels)``."""
        if x.shape[-1] != math.prod(self.in_shape):
            raise MetasymError(
                f"{type(self).__name__} expects inputs with {math.prod(self.in_shape)} features "
                f"(in_shape {self.in_shape}); got shape {tuple(x.shape)}"
            )
        h = x.reshape(-1, *self.in_shape)  # (n, c_in, h, w)
        for layer, conv in enumerate(self.convs):
            h = F.relu(conv(h) + self.conv_bias[layer].view(-1, 1, 1))
            if layer < LAYERS - 1:
                h = F.max_pool2d(h, 2)
        return h.mean(dim=(-2, -1))  # (n, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits. Shape: ``(n, c_in*h*w)`` -> ``(n, n_way)``."""
        return self.head(self.features(x))


class ConvClassifier(_Classifier):
    """MAML-conv: three 3x3 convolutions, ReLU, pooling and a linear head, all of it fast.

    Args:
        in_shape: ``(c_in, h, w)`` of the flat inputs.
        n_way: number of classes (logits).
        channels: channels of every convolution.

    Shape:
        input ``(n, c_in*h*w)``, output ``(n, n_way)``.
    """

    def __init__(self, in_shape: tuple[int, ...], n_way: int, channels: int = 16) -> None:
        super().__init__(in_shape, n_way, channels)
        convs = []
        for layer in range(LAYERS):
            c_in = in_shape[0] if layer == 0 else channels
            convs.append(ScaledConv2d(c_in, channels, KERNEL))
        self.convs = nn.ModuleList(convs)


class SharedConvClassifier(_Classifier):
    """MSR-conv: the layout of ``ConvClassifier`` with kernels ``reshape(U v)`` (arXiv 2007.02933).

    Fast (inner loop): each convolution's ``v`` and the head. Meta (outer loop only): each ``U``
    and the convolution biases (a bias adapted per task could break a symmetry tied into ``U``).

    Args:
        in_shape: ``(c_in, h, w)`` of the flat inputs.
        n_way: number of classes (logits).
        channels: channels of every convolution.
        group_order: ``|G|`` of the symmetry ``U`` should be able to tie: each layer has
            ``k = ceil(c_out c_in 9 / |G|)`` columns, the size of a group convolution's filter.
            ``1`` gives each layer a full-rank ``U``.

    Shape:
        input ``(n, c_in*h*w)``, output ``(n, n_way)``; layer ``l``'s ``U``:
        ``(c_out*c_in*9, k_l)``.
    """

    fast_parameters = ()  # the convolution biases; U and v are declared by the layers

    def __init__(
        self, in_shape: tuple[int, ...], n_way: int, channels: int = 16, group_order: int = 8
    ) -> None:
        super().__init__(in_shape, n_way, channels)
        _check_sizes(group_order=group_order)
        convs = []
        for layer in range(LAYERS):
            c_in = in_shape[0] if layer == 0 else channels
            latent = math.ceil(channels * c_in * KERNEL**2 / group_order)
            convs.append(ZeroPadSharedConv2d(c_in, channels, KERNEL, latent))
        self.convs = nn.ModuleList(convs)


def _n_way(family: Any) -> int:
    n_way = getattr(family, "n_way", None)
    if not isinstance(n_way, int):
        raise MetasymError(
            f"few-shot models need a classification family with n_way; task "
            f"{getattr(family, 'name', family)!r} has none (try task 'aug_digits')"
        )
    return n_way


def build_maml_conv(family: Any, channels: int = 16) -> nn.Module:
    """``ConvClassifier`` for a few-shot family's image shape and ``n_way``."""
    return ConvClassifier(tuple(family.in_shape), _n_way(family), channels)


def build_msr_conv(family: Any, channels: int = 16, group_order: int = 8) -> nn.Module:
    """``SharedConvClassifier`` for a few-shot family's image shape and ``n_way``."""
    return SharedConvClassifier(tuple(family.in_shape), _n_way(family), channels, group_order)


def invariance_error(model: nn.Module, x: torch.Tensor, perms: torch.Tensor) -> float:
    """Relative change of a classifier's features when its inputs are permuted.

    ``mean_g ||f(g x) - f(x)|| / mean ||f(x)||`` over the images ``x`` and the permutations
    ``g`` (rows of ``perms``, gathers of the flat input, e.g.
    ``tasks.fewshot_digits.d4_pixel_permutations()``). Zero for features invariant to the group.

    Args:
        model: a network with a ``features`` method (``ConvClassifier``, ``SharedConvClassifier``).
        x: flat images.
        perms: index maps of the group's elements.

    Shape:
        x: ``(n, i)``; perms: ``(g, i)``.
    """
    if x.ndim != 2 or perms.ndim != 2 or perms.shape[1] != x.shape[1]:
        raise MetasymError(
            f"invariance_error needs x of shape (n, i) and perms of shape (g, i); got "
            f"{tuple(x.shape)} and {tuple(perms.shape)}"
        )
    features = getattr(model, "features", None)
    if not callable(features):
        raise MetasymError(f"{type(model).__name__} has no features method")
    with torch.no_grad():
        base = features(x)  # (n, c)
        moved = torch.stack([features(x[:, p]) for p in perms])  # (g, n, c)
        change = (moved - base).norm(dim=-1).mean()
        return float(change / base.norm(dim=-1).mean().clamp_min(1e-12))
