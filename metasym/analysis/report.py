"""From a learned sharing matrix ``U`` to an explicit, verified symmetry.

The pipeline (each step a function of ``metasym.analysis``):

1. ``tie_partition``: weight positions whose rows of ``U`` agree are tied; near-zero rows are
   unconnected.
2. ``sharing_group``: every pair ``(s_out, s_in)`` of permutations that maps the partition onto
   itself, found as the automorphism group of a coloured graph.
3. ``describe_sharing``: order, generators, name; or "no exact symmetry" (with the banded Toeplitz
   structure of a valid convolution when present).
4. Agreement with the truth, when the task family knows it: partition distance, adjusted Rand
   index, and whether the recovered group equals, contains or lies inside the true group.
5. ``equivariance_error`` of the learned layer ``W = reshape(U v)`` under the recovered group, and
   of the *snapped* layer whose rows are replaced by the mean row of their class.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sympy.combinatorics import PermutationGroup

from metasym import groups
from metasym.analysis.partition import adjusted_rand_index, partition_distance, tie_partition
from metasym.analysis.symmetry import compare_groups, describe_sharing, equivariance_error
from metasym.errors import MetasymError

__all__ = ["analyze_sharing", "group_from_json", "snap_to_partition"]


def snap_to_partition(U: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Replace each row of ``U`` by the mean row of its class; unconnected rows become zero.

    The snapped ``U`` spans exactly the weights that are constant on the classes, so a group that
    preserves the partition makes every ``reshape(U v)`` exactly equivariant.

    Shape:
        U: ``(o*i, k)``; labels: ``(o, i)`` or ``(o*i,)``; returns ``(o*i, k)``.
    """
    flat = labels.reshape(-1)
    if flat.numel() != U.shape[0]:
        raise MetasymError(f"labels cover {flat.numel()} positions but U has {U.shape[0]} rows")
    U = U.detach().to(torch.float64)
    snapped = torch.zeros_like(U)
    connected = flat >= 0
    if connected.any():
        ids = flat[connected]
        k = int(ids.max()) + 1
        sums = torch.zeros(k, U.shape[1], dtype=U.dtype).index_add_(0, ids, U[connected])
        counts = torch.bincount(ids, minlength=k).clamp(min=1).to(U.dtype)
        snapped[connected] = (sums / counts[:, None])[ids]
    return snapped


def group_from_json(generators: list[list[int]], degree: int) -> PermutationGroup:
    """The layer group written in ``symmetry.json`` (generators as array forms)."""
    if not generators:
        return groups.trivial(degree)
    return groups.from_generators([np.asarray(g) for g in generators], degree)


def analyze_sharing(
    U: torch.Tensor,
    n_out: int,
    n_in: int,
    true_partition: torch.Tensor | None = None,
    true_group: PermutationGroup | None = None,
    zero_tol: float | None = None,
    tie_tol: float | None = None,
    samples: int = 32,
) -> dict[str, Any]:
    """Read the symmetry out of a learned sharing matrix.

    Args:
        U: the learned sharing matrix.
        n_out: outputs ``o``.
        n_in: inputs ``i``.
        true_partition: the family's true tie partition, to score the recovered one.
        true_group: the family's true layer group (``None``: no exact symmetry), to compare with.
        zero_tol: length below which a row of ``U`` is unconnected (``None``: scaled default).
        tie_tol: distance below which rows are tied (``None``: scaled default).
        samples: random ``(v, x)`` draws for the equivariance errors.

    Returns:
        A JSON-ready dict: ``partition`` (labels and class counts), ``group`` (from
        ``describe_sharing``), ``truth`` (scores against the truth, where given) and
        ``equivariance`` (errors of the learned and snapped layers).

    Shape:
        U: ``(o*i, k)``; true_partition: ``(o, i)``.
    """
    if U.ndim != 2 or U.shape[0] != n_out * n_in:
        raise MetasymError(f"U has shape {tuple(U.shape)}; expected (o*i, k) = ({n_out * n_in}, k)")
    labels = tie_partition(U, zero_tol=zero_tol, tie_tol=tie_tol, n_out=n_out, n_in=n_in)
    described = describe_sharing(labels)
    group = group_from_json(described["generators"], n_out + n_in)
    gen = torch.Generator().manual_seed(0)
    snapped = snap_to_partition(U, labels)
    result: dict[str, Any] = {
        "partition": {
            "labels": labels.tolist(),
            "num_classes": described["num_classes"],
            "unconnected": int((labels < 0).sum()),
        },
        "group": described,
        "equivariance": {
            "learned": equivariance_error(U, group, n_out, n_in, samples, gen),
            "snapped": equivariance_error(snapped, group, n_out, n_in, samples, gen),
        },
        "truth": {},
    }
    if true_partition is not None:
        if tuple(true_partition.shape) != (n_out, n_in):
            raise MetasymError(
                f"true partition has shape {tuple(true_partition.shape)}; "
                f"expected ({n_out}, {n_in})"
            )
        result["truth"]["partition_distance"] = partition_distance(labels, true_partition)
        result["truth"]["adjusted_rand_index"] = adjusted_rand_index(labels, true_partition)
    if true_group is not None:
        result["truth"]["group_order"] = int(true_group.order())
        result["truth"]["group_name"] = groups.group_name(true_group)
        result["truth"]["relation"] = compare_groups(group, true_group)
        result["equivariance"]["learned_under_true_group"] = equivariance_error(
            U, true_group, n_out, n_in, samples, gen
        )
        result["equivariance"]["snapped_under_true_group"] = equivariance_error(
            snapped, true_group, n_out, n_in, samples, gen
        )
    elif true_partition is not None:
        result["truth"]["group_order"] = 1
        result["truth"]["group_name"] = "no exact symmetry"
        result["truth"]["relation"] = "equal" if described["order"] == 1 else "supergroup"
    return result
