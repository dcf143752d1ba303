"""Aggregate run folders into a results table and a plot, across seeds.

Every run folder written by ``metasym.train`` holds ``config.yaml`` (the resolved configuration)
and ``metrics.json`` (per method: query MSE on the held-out test tasks with its 95% interval).
This module groups the runs by *cell* ``(task, model, latent, steps)`` and reports, per cell, the
mean over seeds of the query MSE with a 95% Student-t interval over seeds,

    mean = (1/n) sum_s m_s,    half-width = t_{0.975, n-1} * sd(m) / sqrt(n),

beside the mean of the runs' own test-task intervals (the only interval a single seed has).

Use it as ``python -m metasym.aggregate DIR... [--markdown FILE] [--plot FILE]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from metasym.errors import MetasymError

__all__ = [
    "Cell",
    "CellSummary",
    "RunRecord",
    "aggregate",
    "find_runs",
    "load_run",
    "main",
    "markdown_table",
    "plot_summaries",
    "summarize",
]

log = logging.getLogger(__name__)

Cell = tuple[str, str, int | None, int]
"""A cell of the results grid: ``(task, model, latent, outer steps)``; ``latent`` is ``None`` for
models without one (and for ``msr_fc`` left at the task's filter size)."""


@dataclass(frozen=True)
class RunRecord:
    """One method's result in one run folder."""

    path: Path
    task: str
    model: str
    latent: int | None
    steps: int
    seed: int
    mse: float
    ci95: float
    mean_squared_target: float

    @property
    def cell(self) -> Cell:
        return (self.task, self.model, self.latent, self.steps)


@dataclass(frozen=True)
class CellSummary:
    """Query MSE of one cell over its seeds.

    Attributes:
        cell: ``(task, model, latent, steps)``.
        seeds: the seeds that ran, sorted.
        mean: mean over seeds of the query MSE.
        ci95: half-width of the 95% Student-t interval over seeds (NaN for one seed).
        task_ci95: mean over seeds of each run's 95% interval over its test tasks.
        mean_squared_target: mean squared query target of the task (mean over runs).
    """

    cell: Cell
    seeds: tuple[int, ...]
    mean: float
    ci95: float
    task_ci95: float
    mean_squared_target: float


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Every folder at or under ``paths`` that holds both ``config.yaml`` and ``metrics.json``."""
    found: set[Path] = set()
    for root in map(Path, paths):
        if not root.exists():
            raise MetasymError(f"{str(root)!r} does not exist; pass run folders or their parents")
        for metrics in [root / "metrics.json", *root.rglob("metrics.json")]:
            if metrics.is_file() and (metrics.parent / "config.yaml").is_file():
                found.add(metrics.parent.resolve())
    return sorted(found)


def _get(tree: dict[str, Any], dotted: str, path: Path) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise MetasymError(f"{str(path)!r} has no {dotted!r}; is it a metasym run folder?")
        node = node[key]
    return node


def load_run(folder: str | Path) -> list[RunRecord]:
    """The records of one run folder: its main model and every baseline trained beside it."""
    folder = Path(folder)
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, yaml.YAMLError, json.JSONDecodeError) as err:
        raise MetasymError(f"cannot read run folder {str(folder)!r}: {err}") from err
    if not isinstance(config, dict) or not isinstance(metrics, dict):
        raise MetasymError(f"run folder {str(folder)!r} holds no config mapping or metrics object")

    main_model = str(_get(config, "model.name", folder))
    latent = config["model"].get("latent")
    steps = int(_get(config, "meta.outer_steps", folder))
    seed = int(_get(config, "meta.seed", folder))
    task = str(metrics.get("task", _get(config, "task.name", folder)))
    target = float(metrics.get("mean_squared_target", math.nan))
    records = []
    for method, result in _get(metrics, "methods", folder).items():
        if "mse" not in result:
            raise MetasymError(
                f"{str(folder)!r}: method {method!r} has no 'mse' (a classification run?); "
                "the aggregator tabulates regression runs"
            )
        records.append(
            RunRecord(
                path=folder,
                task=task,
                model=str(method),
                # baselines are built with their default options, whatever the main model's are
                latent=int(latent) if method == main_model and latent is not None else None,
                steps=steps,
                seed=seed,
                mse=float(result["mse"]),
                ci95=float(result.get("ci95", math.nan)),
                mean_squared_target=target,
            )
        )
    return records


def _t_quantile(dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def summarize(records: Sequence[RunRecord]) -> list[CellSummary]:
    """Group records by cell and summarise each over its seeds, sorted by cell.

    A seed that appears twice in one cell (a run repeated) counts once: the newest
    ``metrics.json`` wins, and a warning names both folders.
    """
    by_cell: dict[Cell, dict[int, RunRecord]] = {}
    for rec in records:
        seeds = by_cell.setdefault(rec.cell, {})
        old = seeds.get(rec.seed)
        if old is not None:
            newer = max(old, rec, key=lambda r: (r.path / "metrics.json").stat().st_mtime)
            log.warning(
                "cell %s seed %d ran twice (%s, %s); keeping %s",
                rec.cell,
                rec.seed,
                old.path,
                rec.path,
                newer.path,
            )
            rec = newer
        seeds[rec.seed] = rec

    def order(cell: Cell) -> tuple[str, str, int, int]:
        task, model, latent, steps = cell
        return (task, model, -1 if latent is None else latent, steps)

    summaries = []
    for cell in sorted(by_cell, key=order):
        runs = [by_cell[cell][s] for s in sorted(by_cell[cell])]
        values = [r.mse for r in runs]
        n = len(values)
        half = _t_quantile(n - 1) * statistics.stdev(values) / math.sqrt(n) if n > 1 else math.nan
        summaries.append(
            CellSummary(
                cell=cell,
                seeds=tuple(r.seed for r in runs),
                mean=statistics.fmean(values),
                ci95=half,
                task_ci95=statistics.fmean(r.ci95 for r in runs),
                mean_squared_target=statistics.fmean(r.mean_squared_target for r in runs),
            )
        )
    return summaries


def _label(model: str, latent: int | None) -> str:
    return model if latent is None else f"{model} (k={latent})"


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}"


def markdown_table(summaries: Sequence[CellSummary]) -> str:
    """A markdown table, one row per cell."""
    lines = [
        "| task | model | steps | seeds | query MSE | 95% CI (seeds) | 95% CI (test tasks) "
        "| mean sq. target |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        task, model, latent, steps = s.cell
        lines.append(
            f"| {task} | {_label(model, latent)} | {steps} | {len(s.seeds)} | {_fmt(s.mean)} "
            f"| ± {_fmt(s.ci95)} | ± {_fmt(s.task_ci95)} | {_fmt(s.mean_squared_target)} |"
        )
    return "\n".join(lines)


def plot_summaries(summaries: Sequence[CellSummary], path: str | Path) -> Path:
    """Bar chart of the query MSE per cell, one panel per task, one bar colour per step count.

    Error bars are the 95% interval over seeds, or over test tasks where only one seed ran.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not summaries:
        raise MetasymError("no runs to plot; pass folders that hold finished runs")
    tasks = sorted({s.cell[0] for s in summaries})
    steps = sorted({s.cell[3] for s in summaries})
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(6.5, 5 * len(tasks)), 4.6), squeeze=False)
    width = 0.8 / len(steps)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = [s for s in summaries if s.cell[0] == task]
        labels = list(dict.fromkeys(_label(s.cell[1], s.cell[2]) for s in rows))  # cell order
        for j, n_steps in enumerate(steps):
            xs, heights, errors = [], [], []
            for s in rows:
                if s.cell[3] != n_steps:
                    continue
                shift = (j - (len(steps) - 1) / 2) * width
                xs.append(labels.index(_label(s.cell[1], s.cell[2])) + shift)
                heights.append(s.mean)
                errors.append(s.task_ci95 if math.isnan(s.ci95) else s.ci95)
            # a log axis cannot show an interval reaching zero: clip the lower arm
            lower = [min(e, 0.9 * h) for e, h in zip(errors, heights, strict=True)]
            ax.bar(
                xs, heights, width, yerr=[lower, errors], capsize=3, label=f"{n_steps} outer steps"
            )
        target = statistics.fmean(s.mean_squared_target for s in rows)
        if not math.isnan(target):
            ax.axhline(target, color="gray", linestyle="--", linewidth=1, label="mean sq. target")
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_title(task)
        ax.set_xlabel("model")
        ax.set_ylabel("query MSE (held-out tasks)")
        ax.legend(fontsize=8)
    fig.suptitle("query MSE after adaptation\n(mean over seeds, 95% interval)", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def aggregate(
    paths: Iterable[str | Path],
    markdown: str | Path | None = None,
    plot: str | Path | None = None,
) -> str:
    """Read every run folder under ``paths``; write the table and plot; return the table.

    Args:
        paths: run folders or folders above them (searched recursively).
        markdown: where to write the markdown table (``None``: not written).
        plot: where to write the PNG plot (``None``: not drawn).

    Returns:
        The markdown table.
    """
    paths = list(paths)
    folders = find_runs(paths)
    if not folders:
        raise MetasymError(
            f"no run folders (config.yaml + metrics.json) under {', '.join(map(str, paths))}"
        )
    summaries = summarize([rec for folder in folders for rec in load_run(folder)])
    table = markdown_table(summaries)
    if markdown is not None:
        Path(markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown).write_text(table + "\n")
    if plot is not None:
        plot_summaries(summaries, plot)
    return table


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m metasym.aggregate DIR... [--markdown FILE] [--plot FILE]``."""
    parser = argparse.ArgumentParser(description="Tabulate metasym run folders across seeds.")
    parser.add_argument("dirs", nargs="+", help="run folders or folders above them")
    parser.add_argument("--markdown", help="write the markdown table here")
    parser.add_argument("--plot", help="write the PNG plot here")
    args = parser.parse_args(argv)
    try:
        print(aggregate(args.dirs, args.markdown, args.plot))
    except MetasymError as err:
        print(f"metasym-aggregate: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
