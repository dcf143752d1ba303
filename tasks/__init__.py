"""Task samplers: families of regression problems that share a hidden symmetry."""

from __future__ import annotations

from typing import Any

from metasym.errors import MetasymError
from tasks.base import LinearTaskFamily, TaskBatch, TaskFamily
from tasks.conv1d import Conv1dTasks
from tasks.digits import DigitsP4Tasks
from tasks.fewshot_digits import AugDigitsTasks
from tasks.locally_connected import LocallyConnected1dTasks
from tasks.permutation import PermutationTasks
from tasks.rotations2d import RotationTasks

__all__ = [
    "FAMILIES",
    "AugDigitsTasks",
    "Conv1dTasks",
    "DigitsP4Tasks",
    "LinearTaskFamily",
    "LocallyConnected1dTasks",
    "PermutationTasks",
    "RotationTasks",
    "TaskBatch",
    "TaskFamily",
    "make_family",
]

FAMILIES: dict[str, type[TaskFamily]] = {
    "conv1d": Conv1dTasks,
    "locally_connected1d": LocallyConnected1dTasks,
    "digits_p4": DigitsP4Tasks,
    "permutation": PermutationTasks,
    "rotations2d": RotationTasks,
    "aug_digits": AugDigitsTasks,
}


def make_family(name: str, **options: Any) -> TaskFamily:
    """Build a task family by name, e.g. ``make_family("conv1d", circular=True)``."""
    if name not in FAMILIES:
        raise MetasymError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(FAMILIES))}")
    try:
        return FAMILIES[name](**options)
    except TypeError as err:
        raise MetasymError(f"bad options {sorted(options)} for task {name!r}: {err}") from err
