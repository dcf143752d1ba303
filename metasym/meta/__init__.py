"""Meta-learning: the functional inner loop and the outer loop that learns the sharing."""

from metasym.meta.inner import BACKENDS, adapt, task_losses
from metasym.meta.trainer import EvalResult, MetaConfig, MetaLearner, load_checkpoint

__all__ = [
    "BACKENDS",
    "EvalResult",
    "MetaConfig",
    "MetaLearner",
    "adapt",
    "load_checkpoint",
    "task_losses",
]
