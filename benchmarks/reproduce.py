"""Reproduce the MSR paper's regression grid (arXiv 2007.02933) and tabulate it.

Runs ``python -m metasym.train`` as Hydra multiruns (``-m``) over

- tasks: ``conv1d`` (a rank-1 locally connected family), ``locally_connected1d`` rank 2 and 5;
- models: ``dense``, ``lc``, ``conv``, and ``msr_fc`` with latent size 3, 6 and 30;
- outer steps 1000 and 5000;
- seeds 0, 1, 2 (``meta.seed``),

one run folder per cell under ``<out>/steps<S>/<task>/<models>_seed<s>/``, then aggregates every
run folder under ``<out>`` with ``metasym.aggregate`` into ``<out>/results.md`` and
``<out>/results.png``.

Restrict the grid with ``--tasks``, ``--models``, ``--steps`` and ``--seeds``; a sweep whose run
folders are all complete is not run again, so an interrupted suite resumes where it stopped::

    python benchmarks/reproduce.py --steps 1000 --seeds 0          # the quick pass
    python benchmarks/reproduce.py --jobs 2                         # the whole grid, two at a time
    python benchmarks/reproduce.py --aggregate-only
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from metasym.aggregate import aggregate, find_runs  # noqa: E402

TASKS: dict[str, list[str]] = {
    "conv1d": ["task=conv1d"],
    "rank2": ["task=locally_connected1d", "task.rank=2"],
    "rank5": ["task=locally_connected1d", "task.rank=5"],
}
"""Task label -> Hydra overrides."""

MODELS = ("dense", "lc", "conv", "msr_fc3", "msr_fc6", "msr_fc30")
"""Model labels: ``msr_fc<k>`` is ``model=msr_fc model.latent=<k>``."""


@dataclass(frozen=True)
class Sweep:
    """One Hydra multirun: a task, a group of models, one step count, one seed."""

    task: str
    models: tuple[str, ...]
    steps: int
    seed: int
    out: Path

    @property
    def msr(self) -> bool:
        return self.models[0].startswith("msr_fc")

    @property
    def folder(self) -> Path:
        group = "msr_fc" if self.msr else "baselines"
        return self.out / f"steps{self.steps}" / self.task / f"{group}_seed{self.seed}"

    @property
    def cells(self) -> int:
        return len(self.models)

    def command(self, threads: int, eval_every: int) -> list[str]:
        if self.msr:
            latents = ",".join(m.removeprefix("msr_fc") for m in self.models)
            models = ["model=msr_fc", f"model.latent={latents}"]
            subdir = "${hydra.job.num}_${task.name}_msr_fc${model.latent}_seed${meta.seed}"
        else:
            models = [f"model={','.join(self.models)}"]
            subdir = "${hydra.job.num}_${task.name}_${model.name}_seed${meta.seed}"
        return [
            sys.executable,
            "-m",
            "metasym.train",
            "-m",
            *TASKS[self.task],
            *models,
            f"meta.outer_steps={self.steps}",
            f"meta.seed={self.seed}",
            f"meta.eval_every={eval_every}",
            "meta.checkpoint_every=0",
            f"threads={threads}",
            f"hydra.sweep.dir={self.folder}",
            f"hydra.sweep.subdir={subdir}",
        ]

    def complete(self) -> bool:
        return self.folder.is_dir() and len(find_runs([self.folder])) == self.cells


def _sweeps(args: argparse.Namespace) -> list[Sweep]:
    out = Path(args.out).resolve()
    sweeps = []
    # short runs and first seeds first, so that a partial suite already covers every cell once
    for steps in sorted(args.steps):
        for seed in args.seeds:
            for task in args.tasks:
                for group in (
                    tuple(m for m in args.models if not m.startswith("msr_fc")),
                    tuple(m for m in args.models if m.startswith("msr_fc")),
                ):
                    if group:
                        sweeps.append(Sweep(task, group, steps, seed, out))
    return sweeps


def _run(sweep: Sweep, args: argparse.Namespace) -> tuple[Sweep, int, float]:
    if sweep.complete():
        return sweep, 0, 0.0
    if sweep.folder.exists():
        # the training job refuses folders that hold a run: start an incomplete sweep afresh
        shutil.rmtree(sweep.folder)
    sweep.folder.parent.mkdir(parents=True, exist_ok=True)
    log = sweep.folder.parent / f"{sweep.folder.name}.log"
    start = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.call(
            sweep.command(args.threads, args.eval_every),
            cwd=REPO,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    return sweep, rc, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--steps", nargs="+", type=int, default=[1000, 5000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default=str(REPO / "outputs" / "multirun" / "reproduce"))
    parser.add_argument("--jobs", type=int, default=1, help="multiruns at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--eval-every", type=int, default=500, help="test evaluations (0: end)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--aggregate-only", action="store_true", help="skip training")
    args = parser.parse_args(argv)

    sweeps = _sweeps(args)
    failed = []
    if args.dry_run:
        for sweep in sweeps:
            print(" ".join(sweep.command(args.threads, args.eval_every)))
        return 0
    if not args.aggregate_only:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for sweep, rc, seconds in pool.map(lambda s: _run(s, args), sweeps):
                status = "ok" if rc == 0 else f"FAILED (exit {rc}, see {sweep.folder}.log)"
                print(
                    f"{sweep.folder.relative_to(sweep.out)}: {sweep.cells} runs, "
                    f"{seconds:.0f} s, {status}",
                    flush=True,
                )
                if rc != 0:
                    failed.append(sweep)

    out = Path(args.out)
    if not out.is_dir() or not find_runs([out]):
        print(f"no finished run folders under {out}")
        return 1
    table = aggregate([out], out / "results.md", out / "results.png")
    print(table)
    print(f"\ntable: {out / 'results.md'}\nplot: {out / 'results.png'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
