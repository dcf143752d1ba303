"""Permutation-subgroup tasks: random linear maps that commute with a chosen group ``G <= S_n``.

Each task is ``y = W x`` with ``W = sum_c v_c B_c``, where the ``B_c`` are the 0/1 basis matrices
of the ``G``-equivariant linear maps ``R^n -> R^n`` (one per orbit of ``G`` on index pairs
``(o, i)``) and ``v ~ N(0, I/n)`` is drawn per task, so every task satisfies ``W P_g = P_g W``.
Inputs are ``N(0, I)``.

Groups are named by a short spec: ``C<n>`` (cyclic), ``D<n>`` (dihedral on a polygon's vertices),
``S<n>`` (symmetric), ``A<n>`` (alternating), ``T<n>`` (trivial), and direct products acting on
disjoint points, ``C3xC4`` (7 points).
"""

from __future__ import annotations

import re

import torch
from sympy.combinatorics import PermutationGroup

from metasym import groups
from metasym.errors import MetasymError
from tasks.base import LinearTaskFamily, weights_from_partition

__all__ = ["PermutationTasks", "parse_group"]

_FACTORS = {
    "C": groups.cyclic,
    "D": groups.dihedral,
    "S": groups.symmetric,
    "A": groups.alternating,
    "T": groups.trivial,
}
_SPEC = re.compile(r"^([CDSAT])(\d+)$")


def parse_group(spec: str) -> PermutationGroup:
    """A permutation group from a spec such as ``"S5"``, ``"D6"``, ``"C16"`` or ``"C3xC4"``."""
    factors = []
    for part in str(spec).split("x"):
        match = _SPEC.match(part.strip())
        if match is None:
            raise MetasymError(
                f"unknown group {spec!r}; use C<n>, D<n>, S<n>, A<n> or T<n> (cyclic, dihedral, "
                "symmetric, alternating, trivial) joined by 'x' for products, e.g. 'S5' or 'C3xC4'"
            )
        letter, n = match.group(1), int(match.group(2))
        if n < 1 or (letter == "D" and n < 3):
            raise MetasymError(f"group {part!r} needs n >= {3 if letter == 'D' else 1}; got {n}")
        factors.append(_FACTORS[letter](n))
    group = factors[0]
    for factor in factors[1:]:
        group = groups.direct_product(group, factor)
    return group


class PermutationTasks(LinearTaskFamily):
    """Random ``G``-equivariant linear maps ``R^n -> R^n``.

    Args:
        group: a spec for ``parse_group`` (``n`` is the group's degree).
    """

    def __init__(self, group: str = "S5") -> None:
        self.group_spec = str(group)
        self.group = parse_group(self.group_spec)
        n = self.group.degree
        self.name = f"permutation_{self.group_spec}"
        self.in_shape = (n,)
        self.out_shape = (n,)
        self._layer_group = groups.diagonal_action(self.group)
        self._partition = groups.pair_orbits(self._layer_group, n, n)  # (o, i)
        self.filter_size = int(self._partition.max()) + 1
        self.models = ("msr_fc", "dense")

    def _weights(self, b: int, generator: torch.Generator) -> torch.Tensor:
        v = torch.randn(b, self.filter_size, generator=generator) / self.in_features**0.5
        return weights_from_partition(self._partition, v)

    def true_partition(self) -> torch.Tensor:
        return self._partition.clone()

    def true_group(self) -> PermutationGroup:
        return self._layer_group
