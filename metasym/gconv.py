"""Lifting group convolutions on a square grid, with the group built in or meta-learned.

The point groups here are ``C4`` (quarter turns) and ``D4`` (quarter turns and reflections) acting
on the pixels of an ``n x n`` grid about its centre. Every element is an exact pixel permutation.
A *lifting* convolution with filters ``f_c`` (``c`` of them, each ``s x s``) produces one map per
pair ``(c, g)``:

    y[c, g](q) = sum_u f_c(g^-1 u) x(q + u)         (zero outside the image)

It is equivariant: for every ``h`` in the group, rotating the input by ``h`` moves each output map
by ``h`` and permutes the group index by left multiplication, ``y'[c, h g](h q) = y[c, g](q)``.

As weight sharing (MSR, arXiv 2007.02933), the kernel tensor ``K`` of shape ``(c |G|, 1, s, s)`` is
``reshape(U v)`` with the 0/1 matrix ``U`` of ``lifting_sharing`` and ``v`` the ``c s^2`` filter
taps. ``PaddedSharedConv2d`` learns ``U`` (``msr_conv``) or takes it fixed (``gconv``);
``PaddedConv2d`` is the plain convolution with ``c |G|`` free filters (MAML-conv).

Elements are numbered ``g = s * 4 + r`` for ``R^r F^s``, with ``R`` the quarter turn
``(y, x) -> (x, n - 1 - y)`` of ``metasym.groups.grid_rotations`` and ``F`` the left-right flip
``(y, x) -> (y, n - 1 - x)`` of ``metasym.groups.grid_dihedral``; ``C4`` is ``g = 0 .. 3``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metasym.errors import MetasymError
from metasym.layers import SharedConv2d, SharingTensor

if TYPE_CHECKING:
    from tasks.base import TaskFamily

__all__ = [
    "POINT_GROUPS",
    "PaddedConv2d",
    "PaddedSharedConv2d",
    "build_conv2d",
    "build_gconv",
    "build_msr_conv",
    "kernel_tap_index",
    "lift_filters",
    "lifting_sharing",
    "multiplication_table",
    "pixel_permutation",
    "span_energy",
    "point_group_elements",
    "transform_images",
]

POINT_GROUPS = {"c4": 4, "d4": 8}
"""The supported point groups and their orders."""

_ROTATION = np.array([[0, 1], [-1, 0]])  # (dy, dx) -> (dx, -dy)
_FLIP = np.array([[1, 0], [0, -1]])  # (dy, dx) -> (dy, -dx)


def _check_group(group: str) -> None:
    if group not in POINT_GROUPS:
        raise MetasymError(
            f"unknown point group {group!r}; valid groups: {', '.join(sorted(POINT_GROUPS))}"
        )


def _check_kernel(kernel_size: int) -> None:
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise MetasymError(f"kernel_size must be an odd positive integer; got {kernel_size!r}")


def point_group_elements(group: str) -> np.ndarray:
    """The elements ``R^r F^s`` as integer matrices acting on offsets ``(dy, dx)``.

    Args:
        group: ``"c4"`` or ``"d4"``.

    Returns:
        Element ``g = s * 4 + r`` at index ``g``.

    Shape:
        ``(|G|, 2, 2)``, dtype int64.
    """
    _check_group(group)
    flips = 2 if group == "d4" else 1
    elements = []
    for s in range(flips):
        for r in range(4):
            elements.append(np.linalg.matrix_power(_ROTATION, r) @ np.linalg.matrix_power(_FLIP, s))
    return np.stack(elements).astype(np.int64)


def _index_of(elements: np.ndarray, matrix: np.ndarray) -> int:
    hits = np.flatnonzero((elements == matrix).all(axis=(1, 2)))
    if hits.size != 1:
        raise MetasymError(f"matrix {matrix.tolist()} is not an element of the point group")
    return int(hits[0])


def multiplication_table(group: str) -> np.ndarray:
    """``table[h, g]`` is the index of the product ``h g``.

    Shape:
        ``(|G|, |G|)``, dtype int64.
    """
    elements = point_group_elements(group)
    size = len(elements)
    table = np.empty((size, size), dtype=np.int64)
    for h in range(size):
        for g in range(size):
            table[h, g] = _index_of(elements, elements[h] @ elements[g])
    return table


def kernel_tap_index(group: str, kernel_size: int = 3) -> torch.Tensor:
    """Which tap of the base filter each transformed kernel reads: ``(g f)(u) = f(g^-1 u)``.

    Taps are numbered row-major, ``t = (dy + m) * s + (dx + m)`` with ``m = s // 2``.

    Returns:
        ``index[g, t]`` = the tap of ``g^-1 u_t``.

    Shape:
        ``(|G|, s * s)``, dtype long.
    """
    _check_kernel(kernel_size)
    m = kernel_size // 2
    offsets = np.stack(
        np.divmod(np.arange(kernel_size * kernel_size), kernel_size), axis=1
    )  # (t, 2) as (row, col)
    offsets = offsets - m  # (t, 2) as (dy, dx)
    index = []
    for g in point_group_elements(group):
        inv = np.round(np.linalg.inv(g)).astype(np.int64)
        src = offsets @ inv.T + m  # (t, 2): g^-1 u_t, shifted to row/col
        index.append(src[:, 0] * kernel_size + src[:, 1])
    return torch.from_numpy(np.stack(index))


def lift_filters(filters: torch.Tensor, group: str) -> torch.Tensor:
    """Every filter transformed by every group element: the lifting convolution's kernels.

    Args:
        filters: ``c`` square filters per task.
        group: ``"c4"`` or ``"d4"``.

    Returns:
        Kernels with channel ``c * |G| + g`` holding ``g f_c``.

    Shape:
        filters: ``(b, c, s, s)``; returns ``(b, c |G|, 1, s, s)``.
    """
    if filters.ndim != 4 or filters.shape[-1] != filters.shape[-2]:
        raise MetasymError(
            "filters must have shape (b, c, s, s) with square s x s taps; got "
            f"{tuple(filters.shape)}"
        )
    b, c, s, _ = filters.shape
    index = kernel_tap_index(group, s)  # (g, t)
    lifted = filters.reshape(b, c, s * s)[:, :, index]  # (b, c, g, t)
    return lifted.reshape(b, c * index.shape[0], 1, s, s)


def lifting_sharing(group: str, out_channels: int, kernel_size: int = 3) -> SharingTensor:
    """The sharing matrix ``U`` that makes ``reshape(U v)`` a lifting group convolution kernel.

    Row ``((c |G| + g) s + dy) s + dx`` of ``U`` (the kernel entry of output channel ``(c, g)``)
    has a single 1, in column ``c s^2 + t`` with ``t`` the tap of ``g^-1 u``; so ``v`` holds the
    ``c`` base filters and ``K = reshape(U v)`` ties kernel entries along the group action
    (arXiv 2007.02933).

    Shape:
        ``(c |G| s^2, c s^2)``.
    """
    if not isinstance(out_channels, int) or isinstance(out_channels, bool) or out_channels < 1:
        raise MetasymError(f"out_channels must be a positive integer; got {out_channels!r}")
    taps = kernel_size * kernel_size
    units = torch.eye(out_channels * taps).view(-1, out_channels, kernel_size, kernel_size)
    # each column of U is the lifted kernel of one unit filter
    columns = lift_filters(units, group)  # (c s^2, c |G|, 1, s, s)
    return columns.reshape(out_channels * taps, -1).T.contiguous()


def pixel_permutation(group: str, element: int, size: int) -> np.ndarray:
    """Where element ``g`` sends each pixel of a ``size x size`` grid (row-major numbering).

    Rotations and reflections are about the grid's centre, so they permute pixels exactly.

    Returns:
        ``perm[p]`` = the pixel that ``p`` moves to.

    Shape:
        ``(size * size,)``, dtype int64.
    """
    elements = point_group_elements(group)
    if not 0 <= element < len(elements):
        raise MetasymError(
            f"element {element!r} is outside group {group!r}; valid: 0 .. {len(elements) - 1}"
        )
    y, x = np.divmod(np.arange(size * size), size)
    # doubled coordinates about the centre stay integers for even sizes too
    rel = np.stack([2 * y - (size - 1), 2 * x - (size - 1)], axis=1)  # (p, 2)
    moved = rel @ elements[element].T
    ny, nx = (moved[:, 0] + size - 1) // 2, (moved[:, 1] + size - 1) // 2
    return (ny * size + nx).astype(np.int64)


def transform_images(images: torch.Tensor, group: str, element: int) -> torch.Tensor:
    """Move image content by element ``g``: ``(g x)(g p) = x(p)`` on every channel.

    Shape:
        images: ``(..., h, w)`` with ``h == w``; returns the same shape.
    """
    size = images.shape[-1]
    if images.ndim < 2 or images.shape[-2] != size:
        raise MetasymError(f"images must be square (..., n, n); got shape {tuple(images.shape)}")
    perm = torch.from_numpy(pixel_permutation(group, element, size))
    flat = images.reshape(*images.shape[:-2], size * size)
    out = torch.empty_like(flat)
    out[..., perm] = flat
    return out.view(images.shape)


def span_energy(U: torch.Tensor, reference: torch.Tensor) -> float:
    """Share of ``U``'s squared norm inside the column span of ``reference``.

    ``1`` means every kernel ``reshape(U v)`` lies in the span of ``reference`` (for
    ``reference = lifting_sharing(...)``: every kernel is a lifting group convolution);
    ``k / rows`` is what a random ``U`` gets.

    Shape:
        U: ``(rows, k)``; reference: ``(rows, k_ref)``.
    """
    if U.ndim != 2 or reference.ndim != 2 or U.shape[0] != reference.shape[0]:
        raise MetasymError(
            f"U {tuple(U.shape)} and reference {tuple(reference.shape)} must be matrices with the "
            "same number of rows"
        )
    basis, _ = torch.linalg.qr(reference.double())  # (rows, k_ref), orthonormal columns
    U = U.detach().double()
    return float((basis.T @ U).pow(2).sum() / U.pow(2).sum())


def _check_image_shape(in_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(in_shape) != 3 or any(not isinstance(d, int) or d < 1 for d in in_shape):
        raise MetasymError(f"in_shape must be (channels, height, width); got {in_shape!r}")
    return in_shape[0], in_shape[1], in_shape[2]


def _unflatten(x: torch.Tensor, in_shape: tuple[int, int, int], who: str) -> torch.Tensor:
    if x.shape[-1] != math.prod(in_shape):
        raise MetasymError(
            f"{who} expects flat inputs of {math.prod(in_shape)} = {in_shape} features; got shape "
            f"{tuple(x.shape)}"
        )
    return x.reshape(-1, *in_shape)


class PaddedSharedConv2d(SharedConv2d):
    """A ``SharedConv2d`` on flat vectors with zero "same" padding: kernel ``reshape(U v)``.

    ``U`` spans the whole kernel tensor ``(c_out, c_in, s, s)``, so it can tie entries across
    output channels, as a lifting group convolution does (arXiv 2007.02933). With
    ``sharing=lifting_sharing(...)`` the layer *is* that group convolution: ``U`` becomes a buffer
    and only ``v`` is adapted or learned.

    Args:
        in_shape: ``(c_in, h, w)`` of one input.
        out_channels: ``c_out``.
        kernel_size: odd side ``s`` of the kernel.
        latent: filter size ``k`` (columns of ``U``); with ``sharing``, its column count.
        sharing: a fixed sharing matrix, or ``None`` to meta-learn ``U``.

    Shape:
        input ``(n, c_in h w)``, output ``(n, c_out h w)`` (row-major ``(c, y, x)``);
        ``U``: ``(c_out c_in s^2, k)``, ``v``: ``(k,)``.
    """

    fast_parameters = ("v",)

    def __init__(
        self,
        in_shape: tuple[int, ...],
        out_channels: int,
        kernel_size: int,
        latent: int | None = None,
        sharing: SharingTensor | None = None,
    ) -> None:
        shape = _check_image_shape(in_shape)
        _check_kernel(kernel_size)
        if latent is None:
            if sharing is None:
                raise MetasymError("PaddedSharedConv2d needs a latent size or a sharing matrix")
            latent = int(sharing.shape[-1])
        super().__init__(shape[0], out_channels, kernel_size, latent)
        self.in_shape = shape
        if sharing is not None:
            rows = math.prod(self.kernel_shape)
            if tuple(sharing.shape) != (rows, latent):
                raise MetasymError(
                    f"sharing matrix has shape {tuple(sharing.shape)}; expected "
                    f"(c_out*c_in*s*s, k) = ({rows}, {latent})"
                )
            del self.U
            self.register_buffer("U", sharing.detach().clone().float())

    def kernel(self) -> torch.Tensor:
        """The kernel ``reshape(U v)``. Shape: ``(c_out, c_in, s, s)``."""
        return (self.U @ self.v).view(self.kernel_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        h = _unflatten(x, self.in_shape, "PaddedSharedConv2d")  # (n, c_in, h, w)
        out = F.conv2d(h, self.kernel(), padding=self.kernel_shape[-1] // 2)
        return out.reshape(*lead, -1)


class PaddedConv2d(nn.Module):
    """A plain convolution on flat vectors with zero "same" padding; all of it fast (MAML-conv).

    Args:
        in_shape: ``(c_in, h, w)`` of one input.
        out_channels: ``c_out``.
        kernel_size: odd side ``s`` of the kernel.

    Shape:
        input ``(n, c_in h w)``, output ``(n, c_out h w)``; weight ``(c_out, c_in, s, s)``.
    """

    fast_parameters = ("weight",)

    def __init__(self, in_shape: tuple[int, ...], out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.in_shape = _check_image_shape(in_shape)
        c_in = self.in_shape[0]
        _check_kernel(kernel_size)
        if not isinstance(out_channels, int) or out_channels < 1:
            raise MetasymError(f"out_channels must be a positive integer; got {out_channels!r}")
        fan_in = c_in * kernel_size * kernel_size
        self.weight = nn.Parameter(
            torch.randn(out_channels, c_in, kernel_size, kernel_size) / math.sqrt(fan_in)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        h = _unflatten(x, self.in_shape, "PaddedConv2d")  # (n, c_in, h, w)
        out = F.conv2d(h, self.weight, padding=self.weight.shape[-1] // 2)
        return out.reshape(*lead, -1)


def _lifting_sizes(family: TaskFamily, model: str) -> tuple[tuple[int, ...], int, int]:
    """Input shape, output channels and kernel side of a family with zero-padded 2D maps."""
    kernel = family.kernel_size
    if len(family.in_shape) != 3 or len(family.out_shape) != 3 or not isinstance(kernel, int):
        raise MetasymError(
            f"model {model!r} needs a task with (c, h, w) images and a square kernel; task "
            f"{family.name!r} has input shape {family.in_shape} and kernel size {kernel!r}"
        )
    if family.in_shape[1:] != family.out_shape[1:]:
        raise MetasymError(
            f"model {model!r} keeps the image size (zero 'same' padding); task {family.name!r} "
            f"maps {family.in_shape} to {family.out_shape}"
        )
    return family.in_shape, family.out_shape[0], kernel


def build_msr_conv(family: TaskFamily, latent: int | None = None) -> nn.Module:
    """MSR-conv: a zero-padded ``PaddedSharedConv2d`` whose ``U`` is meta-learned.

    ``latent=None`` uses the family's ``filter_size``.
    """
    in_shape, c_out, kernel = _lifting_sizes(family, "msr_conv")
    k = family.filter_size if latent is None else latent
    return PaddedSharedConv2d(in_shape, c_out, kernel, latent=k)


def build_gconv(family: TaskFamily) -> nn.Module:
    """The lifting group convolution of the family's point group: ``U`` fixed, only ``v`` learned.

    The family names its group in ``point_group`` (``"c4"`` or ``"d4"``); its output channels are
    ``c |G|`` for ``c`` base filters.
    """
    in_shape, c_out, kernel = _lifting_sizes(family, "gconv")
    group = getattr(family, "point_group", None)
    if group not in POINT_GROUPS:
        raise MetasymError(
            f"model 'gconv' needs a task with a point group ({', '.join(sorted(POINT_GROUPS))}); "
            f"task {family.name!r} has {group!r}"
        )
    if in_shape[0] != 1 or c_out % POINT_GROUPS[group]:
        raise MetasymError(
            f"model 'gconv' lifts one input channel to c * {POINT_GROUPS[group]} output channels; "
            f"task {family.name!r} maps {in_shape[0]} to {c_out} channels"
        )
    sharing = lifting_sharing(group, c_out // POINT_GROUPS[group], kernel)
    return PaddedSharedConv2d(in_shape, c_out, kernel, sharing=sharing)


def build_conv2d(family: TaskFamily) -> nn.Module:
    """MAML-conv with zero padding: ``c_out`` free ``s x s`` filters, all fast."""
    in_shape, c_out, kernel = _lifting_sizes(family, "conv2d")
    return PaddedConv2d(in_shape, c_out, kernel)
