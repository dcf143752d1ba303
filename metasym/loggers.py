"""Experiment loggers: nothing, or wandb (imported only when chosen; offline by default)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metasym.errors import MetasymError

__all__ = ["LOGGERS", "NullLogger", "WandbLogger", "make_logger"]

WANDB_MODES = ("offline", "online", "disabled")


class NullLogger:
    """Logs nothing."""

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        return None

    def log_image(self, key: str, path: str | Path) -> None:
        return None

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        return None

    def finish(self) -> None:
        return None


class WandbLogger(NullLogger):
    """Logs to Weights & Biases; ``mode="offline"`` writes a local run for ``wandb sync``."""

    def __init__(
        self,
        config: dict[str, Any],
        run_dir: str | Path,
        project: str = "metasym",
        mode: str = "offline",
        entity: str | None = None,
        name: str | None = None,
    ) -> None:
        if mode not in WANDB_MODES:
            raise MetasymError(
                f"unknown wandb mode {mode!r}; valid modes: {', '.join(WANDB_MODES)}"
            )
        import wandb  # only when asked for

        self._wandb = wandb
        self.run = wandb.init(
            project=project,
            entity=entity,
            name=name,
            mode=mode,  # type: ignore[arg-type]  # checked against WANDB_MODES above
            config=config,
            dir=str(run_dir),
        )

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.run.log(metrics, step=step)

    def log_image(self, key: str, path: str | Path) -> None:
        self.run.log({key: self._wandb.Image(str(path))})

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.run.log({key: self._wandb.Table(columns=list[Any](columns), data=rows)})

    def finish(self) -> None:
        self.run.finish()


LOGGERS = ("none", "wandb")


def make_logger(
    name: str, config: dict[str, Any], run_dir: str | Path, **options: Any
) -> NullLogger:
    """Build a logger by name (``"none"`` or ``"wandb"``)."""
    if name == "none":
        return NullLogger()
    if name == "wandb":
        return WandbLogger(config, run_dir, **options)
    raise MetasymError(f"unknown logger {name!r}; valid loggers: {', '.join(LOGGERS)}")
