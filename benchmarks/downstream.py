"""Sample efficiency of a discovered layer on one new task, against a dense layer of the same shape.

A run of ``metasym.train`` with ``model=msr_fc`` learns a sharing matrix ``U`` across many tasks
(``W = reshape(U v)``, arXiv 2007.02933). This benchmark asks what that buys downstream: it takes
ONE fresh task from the same family (drawn with a seeded generator from the ``"test"`` split) and
trains three models from scratch on ``n`` of its examples,

- ``discovered``: ``load_layer(run_dir)``, the learned ``U`` frozen, only ``v`` (``k`` numbers) fit;
- ``snapped``: ``load_layer(run_dir, snap=True)``, ``U`` replaced by the exact sharing of the group
  read off the learned one;
- ``dense``: ``nn.Linear`` of the same shape, all ``o*i`` weights fit,

for ``n`` in 1, 2, 4, ..., 64 and several seeds (each seed a disjoint set of training examples of
the same task). Every model is linear in its trainable parameters, so fitting is exact: the
minimum-norm least-squares solution (the point gradient descent from zero converges to), solved in
float64 with ``torch.linalg.lstsq(driver="gelsd")``. The test MSE is measured on 1000 further
examples of the task. The first table gives its mean and 95% Student-t interval over seeds; the
second the smallest ``n`` whose mean test MSE is at most a target (default 5% of the mean squared
target), ``never`` if no ``n`` reaches it.

The discovered layer is an ordinary ``nn.Module``; it plugs into any model, e.g.::

    layer = load_layer(run_dir)            # U is a buffer: only layer.v trains
    model = nn.Sequential(layer, nn.Tanh(), nn.Linear(layer.out_features, 1))
    torch.optim.Adam(model.parameters())   # finds v and the head's weights only

Run (without ``--run-dir`` it first meta-trains circular 3-tap convolutions on 16 points, 2000
cosine-scheduled outer steps, about ten seconds on one CPU thread)::

    python benchmarks/downstream.py
    python benchmarks/downstream.py --run-dir outputs/<date>/<time>_conv1d_msr_fc --seeds 20
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from scipy import stats  # noqa: E402
from torch import nn  # noqa: E402

from metasym.discovered import load_layer, read_run  # noqa: E402
from metasym.errors import MetasymError  # noqa: E402
from metasym.layers import SharedLinear  # noqa: E402
from metasym.train import run  # noqa: E402
from tasks.base import TaskFamily  # noqa: E402

__all__ = [
    "DEFAULT_SIZES",
    "Curve",
    "TaskData",
    "draw_task",
    "fit_least_squares",
    "format_tables",
    "main",
    "meta_train",
    "plug_in_demo",
    "sample_efficiency",
    "samples_to_reach",
    "summarize",
]

DEFAULT_SIZES = (1, 2, 4, 8, 16, 32, 64)

ModelFactory = Callable[[], nn.Module]
"""Builds a fresh, untrained model each time it is called."""

Curve = dict[int, list[float]]
"""Test MSE per training-set size ``n``, one entry per seed."""


@dataclass(frozen=True)
class TaskData:
    """Examples of one task: a pool of training examples per seed and a shared test set.

    Shape:
        train_x: ``(s, n, i)``; train_y: ``(s, n, o)``; test_x: ``(n_test, i)``;
        test_y: ``(n_test, o)``.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def mean_squared_target(self) -> float:
        return float(self.test_y.pow(2).mean())


def meta_train(run_dir: str | Path, outer_steps: int = 2000, seed: int = 0) -> Path:
    """Meta-train MSR-FC on circular 3-tap convolutions of 16 points and write a run folder.

    Args:
        run_dir: the (new) run folder.
        outer_steps: outer Adam steps, with a cosine learning-rate schedule.
        seed: ``meta.seed``.

    Returns:
        ``run_dir``, holding ``checkpoint.pt`` and ``symmetry.json``.
    """
    settings: dict[str, Any] = {
        "task": {"name": "conv1d", "n_in": 16, "kernel_size": 3, "circular": True},
        "model": {"name": "msr_fc"},
        "meta": {
            "outer_steps": outer_steps,
            "lr_schedule": "cosine",
            "eval_tasks": 100,
            "eval_every": 0,
            "seed": seed,
        },
        "logger": {"name": "none"},
        "baselines": [],
    }
    run(settings, run_dir, progress=False)
    return Path(run_dir)


def draw_task(
    family: TaskFamily,
    seeds: int,
    max_n: int,
    n_test: int = 1000,
    task_seed: int = 0,
    noise: float = 0.0,
) -> TaskData:
    """Draw one fresh task of ``family`` and split its examples into per-seed pools and a test set.

    Args:
        family: the family the run was meta-trained on.
        seeds: number of disjoint training pools ``s``.
        max_n: examples per pool (the largest training-set size).
        n_test: test examples.
        task_seed: seed of the generator that draws the task and all its examples.
        noise: standard deviation of Gaussian noise added to the training targets (the test
            targets stay clean, so the test MSE measures the error of the fitted map).

    Returns:
        The task's examples; the task comes from the ``"test"`` split.
    """
    gen = torch.Generator().manual_seed(task_seed)
    batch = family.sample(1, seeds * max_n, n_test, generator=gen, split="test")
    i, o = family.in_features, family.out_features
    train_y = batch.support_y[0].view(seeds, max_n, o)  # (s, n, o)
    if noise > 0:
        train_y = train_y + noise * torch.randn(train_y.shape, generator=gen)
    return TaskData(
        train_x=batch.support_x[0].view(seeds, max_n, i),  # (s, n, i)
        train_y=train_y,
        test_x=batch.query_x[0],
        test_y=batch.query_y[0],
    )


def _solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least-squares solution of ``a z = b`` in float64."""
    return torch.linalg.lstsq(a.double(), b.double(), driver="gelsd").solution


def fit_least_squares(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Set a model's trainable parameters to the minimum-norm least-squares fit of ``y`` from ``x``.

    For a ``SharedLinear`` with frozen ``U`` the output ``y_no = sum_k A_nok v_k`` with
    ``A = einsum("ni,oik->nok", x, reshape(U))`` is linear in ``v`` (and in a tied bias ``v_b``
    with ``U_b`` frozen); for ``nn.Linear`` each output row is an independent linear regression.

    Args:
        model: a ``SharedLinear`` whose ``U`` is a buffer, or an ``nn.Linear``.
        x: training inputs.
        y: training targets.

    Raises:
        MetasymError: any other model, or a ``SharedLinear`` whose ``U`` still trains.

    Shape:
        x: ``(n, i)``; y: ``(n, o)``.
    """
    n = x.shape[0]
    if isinstance(model, nn.Linear):
        # the bias is the weight of a constant input
        features = torch.cat([x, x.new_ones(n, 1)], dim=1) if model.bias is not None else x
        solution = _solve(features, y)  # (i [+ 1], o)
        with torch.no_grad():
            model.weight.copy_(solution[: model.in_features].T)
            if model.bias is not None:
                model.bias.copy_(solution[model.in_features])
        return
    if not isinstance(model, SharedLinear):
        raise MetasymError(
            f"fit_least_squares fits SharedLinear or nn.Linear; got {type(model).__name__}"
        )
    if isinstance(model.U, nn.Parameter) and model.U.requires_grad:
        raise MetasymError(
            "fit_least_squares needs U frozen (load the layer with metasym.discovered.load_layer)"
        )
    o, i, k = model.out_features, model.in_features, model.latent
    design = torch.einsum("ni,oik->nok", x, model.U.view(o, i, k))  # (n, o, k)
    if model.bias_U is not None:
        tied_bias = model.bias_U.detach().expand(n, o, -1)  # (n, o, k_b)
        design = torch.cat([design, tied_bias], dim=2)
    solution = _solve(design.reshape(n * o, -1), y.reshape(n * o, 1)).view(-1)
    with torch.no_grad():
        model.v.copy_(solution[:k])
        if model.bias_v is not None:
            model.bias_v.copy_(solution[k:])


def _test_mse(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x) - y).pow(2).mean())


def sample_efficiency(
    factories: dict[str, ModelFactory], data: TaskData, sizes: Sequence[int] = DEFAULT_SIZES
) -> dict[str, Curve]:
    """Fit a fresh copy of every model on the first ``n`` examples of every seed's pool.

    Args:
        factories: model name to a function that builds it untrained.
        data: the task's examples.
        sizes: training-set sizes ``n``; at most the pool size.

    Returns:
        Per model, the test MSE per ``n`` and seed.
    """
    seeds, pool = data.train_x.shape[:2]
    if max(sizes) > pool or min(sizes) < 1:
        raise MetasymError(f"sizes must lie in 1..{pool} (the pool per seed); got {list(sizes)}")
    curves: dict[str, Curve] = {name: {n: [] for n in sizes} for name in factories}
    for name, factory in factories.items():
        for n in sizes:
            for s in range(seeds):
                model = factory()
                fit_least_squares(model, data.train_x[s, :n], data.train_y[s, :n])
                curves[name][n].append(_test_mse(model, data.test_x, data.test_y))
    return curves


def summarize(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval (NaN for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    sem = statistics.stdev(values) / math.sqrt(len(values))
    return mean, float(stats.t.ppf(0.975, len(values) - 1)) * sem


def samples_to_reach(curve: Curve, target: float) -> int | None:
    """The smallest ``n`` whose mean test MSE is at most ``target``; ``None`` if none is."""
    for n in sorted(curve):
        if statistics.fmean(curve[n]) <= target:
            return n
    return None


def _parameters(factory: ModelFactory) -> int:
    return sum(p.numel() for p in factory().parameters() if p.requires_grad)


def format_tables(
    curves: dict[str, Curve], target: float, parameters: dict[str, int] | None = None
) -> str:
    """Markdown tables: test MSE (mean ± 95% interval) per ``n``, and the ``n`` that reaches target.

    Args:
        curves: per model, the test MSE per ``n`` and seed.
        target: the test MSE to reach.
        parameters: trainable parameters per model, shown in the second table.
    """
    names = list(curves)
    sizes = sorted(next(iter(curves.values())))
    lines = ["| n | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for n in sizes:
        cells = []
        for name in names:
            mean, half = summarize(curves[name][n])
            cells.append(f"{mean:.3g} ± {half:.2g}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", f"| model | trainable parameters | smallest n with test MSE <= {target:.3g} |"]
    lines.append("|---|---:|---:|")
    for name in names:
        reached = samples_to_reach(curves[name], target)
        count = "?" if parameters is None else str(parameters[name])
        lines.append(f"| {name} | {count} | {'never' if reached is None else reached} |")
    return "\n".join(lines)


def plug_in_demo(layer: SharedLinear) -> str:
    """Put a copy of the layer into ``nn.Sequential`` with a nonlinearity; describe what trains."""
    model = nn.Sequential(copy.deepcopy(layer), nn.Tanh(), nn.Linear(layer.out_features, 1))
    x = torch.randn(4, layer.in_features, generator=torch.Generator().manual_seed(0))
    out = model(x)
    out.sum().backward()
    trainable = [
        f"{name} {tuple(p.shape)}" for name, p in model.named_parameters() if p.requires_grad
    ]
    return (
        f"nn.Sequential(discovered layer, nn.Tanh(), nn.Linear({layer.out_features}, 1)): "
        f"{tuple(x.shape)} -> {tuple(out.shape)}; trainable: {', '.join(trainable)}; "
        f"U {tuple(layer.U.shape)} is a frozen buffer"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="an existing msr_fc run folder to reuse")
    parser.add_argument("--out", type=Path, help="where to meta-train (default: a temp folder)")
    parser.add_argument("--outer-steps", type=int, default=2000, help="when meta-training")
    parser.add_argument("--seeds", type=int, default=10, help="training sets per n")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--task-seed", type=int, default=0, help="seed of the new task")
    parser.add_argument("--noise", type=float, default=0.0, help="std of training-target noise")
    parser.add_argument(
        "--target", type=float, default=0.05, help="target MSE as a share of the mean sq. target"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="downstream_") as tmp:
        run_dir = args.run_dir
        if run_dir is None:
            run_dir = meta_train(args.out or Path(tmp) / "run", args.outer_steps)
        family = read_run(run_dir).family
        discovered = load_layer(run_dir)
        factories: dict[str, ModelFactory] = {"discovered": lambda: copy.deepcopy(discovered)}
        try:
            snapped = load_layer(run_dir, snap=True)
            factories["snapped"] = lambda: copy.deepcopy(snapped)
        except MetasymError as err:
            print(f"(no snapped layer: {err})")
        has_bias = discovered.bias_U is not None
        i, o = family.in_features, family.out_features
        factories["dense"] = lambda: nn.Linear(i, o, bias=has_bias)

        data = draw_task(
            family, args.seeds, max(args.sizes), args.n_test, args.task_seed, args.noise
        )
        curves = sample_efficiency(factories, data, args.sizes)
        target = args.target * data.mean_squared_target
        parameters = {name: _parameters(f) for name, f in factories.items()}

        print(
            f"one new {family.name} task ({i} -> {o}), run {run_dir}; test MSE on {args.n_test} "
            f"examples, {args.seeds} seeds, training-target noise {args.noise:g}, "
            "minimum-norm least squares; "
            f"mean squared target {data.mean_squared_target:.3g}\n"
        )
        print(format_tables(curves, target, parameters))
        print(f"\n{plug_in_demo(discovered)}")


if __name__ == "__main__":
    main()
