"""G-invariant networks built from orbit bases, and a test of what each tensor order can fit.

A linear map from order-``a`` to order-``b`` tensors on ``[n]`` is G-equivariant iff its
coefficient tensor is constant on G's orbits on ``[n]^(b+a)``, so it is a learned combination of
the 0/1 orbit indicator tensors (Maron, Fetaya, Segol, Lipman, arXiv 1901.09342). Stacking such
layers with pointwise nonlinearities, and ending with a map to order 0, gives an exactly
G-invariant network. Such a network only ever sees G through its orbits on tuples of length at
most ``2 * max_order``, so it is also invariant under the corresponding k-closure of G.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from sympy.combinatorics import PermutationGroup
from torch import Tensor, nn

from metasym.analysis.universality import orbit_count, tuple_orbit_labels
from metasym.errors import MetasymError

__all__ = [
    "ACTIVATIONS",
    "MAX_TENSOR_ORDER",
    "EquivariantLinear",
    "InvariantNetwork",
    "lift",
    "vandermonde",
    "fit_invariant_network",
]

logger = logging.getLogger(__name__)

MAX_TENSOR_ORDER = 3
"""Largest tensor order of an equivariant layer's input or output."""

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "leaky_relu": nn.functional.leaky_relu,
    "silu": nn.functional.silu,
    "tanh": torch.tanh,
}
"""Pointwise nonlinearities by name; being pointwise, each commutes with every permutation."""


def _check_tensor_order(name: str, k: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= MAX_TENSOR_ORDER:
        raise MetasymError(f"{name} must be an integer in 0..{MAX_TENSOR_ORDER}, got {k!r}")


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MetasymError(f"{name} must be a positive integer, got {value!r}")


class EquivariantLinear(nn.Module):
    """A G-equivariant linear layer between tensors of order ``k_in`` and ``k_out`` on ``[n]``.

    ``y[N, o, p] = sum_{i, q} theta[o, i, L[p, q]] x[N, i, q] + beta[o, L_out[p]]`` where ``p``
    runs over ``[n]^k_out``, ``q`` over ``[n]^k_in``, ``L`` labels G's orbits on
    ``[n]^(k_out + k_in)`` and ``L_out`` G's orbits on ``[n]^k_out``. The weight is therefore a
    combination of orbit indicator tensors, which is the general G-equivariant linear map
    (arXiv 1901.09342); the bias is a general G-invariant order-``k_out`` tensor.

    Args:
        group: a permutation group on ``n`` points.
        k_in: input tensor order, ``0..3``.
        k_out: output tensor order, ``0..3``.
        channels_in: input channels ``i``.
        channels_out: output channels ``o``.
        bias: whether to add a G-invariant bias.
        generator: optional seeded generator for the initial weights.

    Shape:
        - input: ``(N, i) + (n,) * k_in``
        - output: ``(N, o) + (n,) * k_out``
    """

    def __init__(
        self,
        group: PermutationGroup,
        k_in: int,
        k_out: int,
        channels_in: int,
        channels_out: int,
        bias: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _check_tensor_order("k_in", k_in)
        _check_tensor_order("k_out", k_out)
        _check_positive("channels_in", channels_in)
        _check_positive("channels_out", channels_out)
        self.n = int(group.degree)
        self.k_in = k_in
        self.k_out = k_out
        self.channels_in = channels_in
        self.channels_out = channels_out

        # Orbit labels of (output index, input index) tuples, flattened to a (p, q) matrix.
        labels = torch.as_tensor(tuple_orbit_labels(group, k_out + k_in).copy(), dtype=torch.long)
        self.labels: Tensor
        self.register_buffer("labels", labels.reshape(self.n**k_out, self.n**k_in))  # (p, q)
        n_orbits = orbit_count(group, k_out + k_in)

        # Each weight entry is one theta, and each output sums n^k_in of them per channel.
        scale = 1.0 / math.sqrt(channels_in * self.n**k_in)
        init = torch.randn(channels_out, channels_in, n_orbits, generator=generator)
        self.weight = nn.Parameter(init * scale)  # (o, i, r)
        self.bias: nn.Parameter | None = None
        if bias:
            out_labels = torch.as_tensor(tuple_orbit_labels(group, k_out).copy(), dtype=torch.long)
            self.bias_labels: Tensor
            self.register_buffer("bias_labels", out_labels.reshape(self.n**k_out))  # (p,)
            self.bias = nn.Parameter(torch.zeros(channels_out, orbit_count(group, k_out)))

    def dense_weight(self) -> Tensor:
        """The full weight tensor expanded from the orbit coefficients.

        Shape:
            ``(o, i, n^k_out, n^k_in)``
        """
        return self.weight[:, :, self.labels]  # (o, i, p, q)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the layer; see the class docstring for the map and shapes."""
        expected = (self.channels_in,) + (self.n,) * self.k_in
        if x.dim() != 1 + len(expected) or tuple(x.shape[1:]) != expected:
            raise MetasymError(
                f"EquivariantLinear expected input of shape (N, {', '.join(map(str, expected))}), "
                f"got {tuple(x.shape)}"
            )
        flat = x.reshape(x.shape[0], self.channels_in, self.n**self.k_in)  # (N, i, q)
        y = torch.einsum("oipq,Niq->Nop", self.dense_weight(), flat)  # (N, o, p)
        if self.bias is not None:
            y = y + self.bias[:, self.bias_labels]
        return y.reshape((x.shape[0], self.channels_out) + (self.n,) * self.k_out)


def lift(x: Tensor, order: int) -> Tensor:
    """The tensor power ``x^{(x) order}``, with a singleton channel axis.

    Permuting the points of ``x`` permutes every index of the tensor power the same way, so the
    lift is equivariant under all of ``S_n``.

    Args:
        x: points in ``R^n``.
        order: the tensor order, ``1..3``.

    Returns:
        ``out[N, 0, j_1, ..., j_order] = x[N, j_1] * ... * x[N, j_order]``.

    Shape:
        - x: ``(N, n)``
        - output: ``(N, 1) + (n,) * order``
    """
    if not isinstance(order, int) or not 1 <= order <= MAX_TENSOR_ORDER:
        raise MetasymError(f"order must be an integer in 1..{MAX_TENSOR_ORDER}, got {order!r}")
    if x.dim() != 2:
        raise MetasymError(f"lift expects x of shape (N, n), got {tuple(x.shape)}")
    out = x
    for _ in range(order - 1):
        out = out.unsqueeze(-1) * x.reshape((x.shape[0],) + (1,) * (out.dim() - 1) + (-1,))
    return out.unsqueeze(1)


class InvariantNetwork(nn.Module):
    """An exactly G-invariant network on ``R^n`` built from tensors of order ``1..max_order``.

    ``h^0_m = x^{(x) m}``; ``h^{t+1}_b = sigma(sum_a L^t_{a->b}(h^t_a))`` for orders
    ``a, b in 1..max_order`` with ``L`` G-equivariant (``EquivariantLinear``); then
    ``z = sigma(sum_a P_{a->0}(h^T_a))`` pools to G-invariant channels and an MLP maps ``z`` to the
    output. Every step commutes with G (the lift and the pointwise sigma commute with all of
    ``S_n``), so the output is G-invariant (arXiv 1901.09342).

    Cost grows as ``n^(2 max_order)``: each 3 -> 3 layer expands a dense ``(o, i, n^3, n^3)``
    weight per call, about 12M floats for ``n = 6`` and ``hidden = 16``.

    Args:
        group: a permutation group on ``n`` points.
        max_order: the largest hidden tensor order, ``1..3``.
        hidden: channels per tensor order and width of the head.
        depth: number of equivariant blocks before pooling, ``>= 1``.
        out_features: output size of the head.
        activation: the pointwise nonlinearity, a key of ``ACTIVATIONS``.
        seed: seed for the initial weights.

    Shape:
        - input: ``(N, n)``
        - output: ``(N, out_features)``
    """

    def __init__(
        self,
        group: PermutationGroup,
        max_order: int,
        hidden: int = 8,
        depth: int = 1,
        out_features: int = 1,
        activation: str = "silu",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise MetasymError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}"
            )
        self.activation = ACTIVATIONS[activation]
        if not isinstance(max_order, int) or not 1 <= max_order <= MAX_TENSOR_ORDER:
            raise MetasymError(
                f"max_order must be an integer in 1..{MAX_TENSOR_ORDER}, got {max_order!r}"
            )
        _check_positive("hidden", hidden)
        _check_positive("depth", depth)
        _check_positive("out_features", out_features)
        self.n = int(group.degree)
        self.max_order = max_order
        self.orders = list(range(1, max_order + 1))
        gen = torch.Generator().manual_seed(seed)

        # One layer per (input order, output order) pair and block; the first of each output
        # order carries the bias.
        self.blocks = nn.ModuleList()
        for t in range(depth):
            channels_in = 1 if t == 0 else hidden
            block = nn.ModuleDict()
            for b in self.orders:
                for a in self.orders:
                    block[f"{a}to{b}"] = EquivariantLinear(
                        group, a, b, channels_in, hidden, bias=a == 1, generator=gen
                    )
            self.blocks.append(block)
        self.pool = nn.ModuleDict(
            {
                f"{a}to0": EquivariantLinear(
                    group, a, 0, hidden, hidden, bias=a == 1, generator=gen
                )
                for a in self.orders
            }
        )
        self.head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_features)
        )
        with torch.no_grad():
            for layer in self.head:
                if isinstance(layer, nn.Linear):
                    bound = 1.0 / math.sqrt(layer.in_features)
                    layer.weight.copy_(
                        (torch.rand(layer.weight.shape, generator=gen) * 2 - 1) * bound
                    )
                    layer.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """Evaluate the network; see the class docstring for the map and shapes."""
        if x.dim() != 2 or x.shape[1] != self.n:
            raise MetasymError(
                f"InvariantNetwork expected input of shape (N, {self.n}), got {tuple(x.shape)}"
            )
        h = {m: lift(x, m) for m in self.orders}
        for block in self.blocks:
            h = {b: self.activation(self._sum_orders(block, h, str(b))) for b in self.orders}
        z = self.activation(self._sum_orders(self.pool, h, "0"))  # (N, hidden)
        out: Tensor = self.head(z)
        return out

    def _sum_orders(self, layers: nn.Module, h: dict[int, Tensor], target: str) -> Tensor:
        """Sum the layers from every hidden order into one target order."""
        assert isinstance(layers, nn.ModuleDict)
        terms = [layers[f"{a}to{target}"](h[a]) for a in self.orders]
        return torch.stack(terms).sum(dim=0)


def vandermonde(x: Tensor) -> Tensor:
    """The Vandermonde product ``prod_{i<j} (x_i - x_j)``.

    It is invariant under even permutations of the points and changes sign under odd ones, so it
    is ``A_n``-invariant but not ``S_n``-invariant.

    Shape:
        - x: ``(N, n)``
        - output: ``(N,)``
    """
    if x.dim() != 2:
        raise MetasymError(f"vandermonde expects x of shape (N, n), got {tuple(x.shape)}")
    i, j = torch.triu_indices(x.shape[1], x.shape[1], offset=1)
    return (x[:, i] - x[:, j]).prod(dim=1)


def fit_invariant_network(
    group: PermutationGroup,
    max_order: int,
    target: Callable[[Tensor], Tensor] = vandermonde,
    n_train: int = 2000,
    n_test: int = 2000,
    steps: int = 1000,
    batch_size: int = 256,
    hidden: int = 8,
    depth: int = 1,
    lr: float = 1e-2,
    activation: str = "silu",
    seed: int = 0,
) -> float:
    """Fit a G-invariant network to a target on ``[-1, 1]^n`` and return its test R^2.

    Inputs are uniform on ``[-1, 1]^n``; the target is standardised on the training set; the
    network is trained with Adam on the mean squared error (learning rate decayed by cosine).
    ``R^2 = 1 - sum (y - yhat)^2 / sum (y - mean y)^2`` on a fresh test set. The defaults suit
    ``depth = 1``; with ``depth = 2`` use a smaller ``lr`` (about ``1e-3``), as ``1e-2`` often
    leaves the fit stuck near the zero function.

    Args:
        group: a permutation group on ``n`` points.
        max_order: hidden tensor order of the network, ``1..3``.
        target: a function ``(N, n) -> (N,)``.
        n_train: training examples.
        n_test: test examples.
        steps: Adam steps.
        batch_size: minibatch size.
        hidden: channels of the network.
        depth: equivariant blocks of the network.
        lr: initial learning rate.
        activation: the network's pointwise nonlinearity.
        seed: seeds the data, the initial weights and the minibatches.

    Returns:
        The test R^2 (1 is a perfect fit, 0 is no better than the mean, can be negative).
    """
    for name, value in [("n_train", n_train), ("n_test", n_test), ("steps", steps)]:
        _check_positive(name, value)
    _check_positive("batch_size", batch_size)
    gen = torch.Generator().manual_seed(seed)
    n = int(group.degree)
    x_train = torch.rand(n_train, n, generator=gen) * 2 - 1
    x_test = torch.rand(n_test, n, generator=gen) * 2 - 1
    y_train, y_test = target(x_train), target(x_test)
    mean, std = y_train.mean(), y_train.std()
    y_train = (y_train - mean) / std
    y_test = (y_test - mean) / std

    model = InvariantNetwork(
        group, max_order, hidden=hidden, depth=depth, activation=activation, seed=seed
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    for step in range(steps):
        idx = torch.randint(0, n_train, (min(batch_size, n_train),), generator=gen)
        loss = (model(x_train[idx]).squeeze(-1) - y_train[idx]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 200 == 0:
            logger.debug("order %d step %d loss %.4f", max_order, step, loss.item())

    with torch.no_grad():
        pred = model(x_test).squeeze(-1)
    residual = (y_test - pred).pow(2).sum()
    total = (y_test - y_test.mean()).pow(2).sum()
    return float(1 - residual / total)
