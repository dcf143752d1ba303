"""Speed and memory of the outer loop: vmapped ``func`` backend against task-by-task ``higher``.

Prints two markdown tables:

(a) ``--part backends``: outer steps per second and peak memory on the MSR paper's setting
    (``conv1d`` 70 -> 68, MSR-FC with k = 3, 32 tasks per step, 1 support / 19 query examples,
    one second-order SGD inner step), for the ``func`` backend, the ``higher`` backend, and the
    closed-form ``ridge`` solver; plus the relative difference of the two backends' meta-gradients
    on the same batch in float64.
(b) ``--part sizes``: time and memory per outer step of the ``func`` backend as the MSR-FC layer
    grows (70 -> 68, 256 -> 256, 1024 -> 1024; k = 3, 9), beside a cost model:

    - ``U`` has ``o*i*k`` entries; with its gradient and Adam's two moments, 4 such tensors;
    - every task has its own ``W' = reshape(U v')`` (``o*i`` entries) and its inner gradient
      ``dL/dW`` (saved for the second-order backward), plus their adjoints in the backward pass:
      about ``4 * b * o * i`` entries.

Each configuration runs in a fresh subprocess, so that the peak resident set size (CPU,
``ru_maxrss``, measured as the growth over the set-up) or ``torch.cuda.max_memory_allocated``
(GPU) belongs to it alone. A configuration whose cost model exceeds ``--memory-gib``, or whose
first step exceeds the time budget, is reported with what limits it instead of being run out.

    python benchmarks/speed.py                      # both tables on the CPU, one thread
    python benchmarks/speed.py --device cuda --part sizes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MIB = 2**20
GIB = 2**30


def _peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _setup(spec: dict[str, Any]):
    import torch

    import tasks
    from metasym.layers import SharedLinear

    torch.manual_seed(0)
    n_in, n_out, k = spec["n_in"], spec["n_out"], spec["k"]
    circular = n_in == n_out
    family = tasks.make_family("conv1d", n_in=n_in, circular=circular)
    dtype = torch.float64 if spec.get("float64") else torch.float32
    model = SharedLinear(n_in, n_out, k).to(spec["device"], dtype)
    batch = family.sample(spec["tasks"], 1, 19, generator=torch.Generator().manual_seed(1))
    batch = type(batch)(
        *(
            t.to(spec["device"], dtype)
            for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        )
    )
    lrs = torch.full((1,), 0.1 if spec["solver"] == "sgd" else 100.0, device=spec["device"])
    lrs = lrs.to(dtype).requires_grad_(True)
    return model, batch, lrs


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time ``spec["steps"]`` outer steps (after one warm-up) of one configuration."""
    import torch

    from metasym.layers import split_parameters
    from metasym.meta import task_losses

    torch.set_num_threads(spec["threads"])
    cuda = spec["device"].startswith("cuda")
    model, batch, lrs = _setup(spec)
    opt = torch.optim.Adam([*model.parameters(), lrs], lr=1e-3)

    def step() -> None:
        fast, meta = split_parameters(model)
        loss = task_losses(
            model, fast, meta, lrs, batch, 1, False, spec["backend"], solver=spec["solver"]
        ).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _peak_rss_bytes()
    start = time.perf_counter()
    step()  # warm-up: also allocates Adam's state
    first = time.perf_counter() - start
    steps = 0
    start = time.perf_counter()
    if first < spec["budget_s"] / 3:
        while steps < spec["steps"] and time.perf_counter() - start < spec["budget_s"]:
            step()
            steps += 1
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes()
    seconds = elapsed / steps if steps else first
    return {
        "seconds_per_step": seconds,
        "steps_timed": steps,
        "first_step_s": first,
        "peak_bytes": peak - base,
        "time_limited": steps == 0,
    }


def _grad_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Relative difference of the func and higher meta-gradients on one batch, in float64."""
    import torch

    from metasym.layers import split_parameters
    from metasym.meta import task_losses

    torch.set_num_threads(spec["threads"])
    model, batch, lrs = _setup({**spec, "float64": True, "solver": "sgd"})
    grads = {}
    for backend in ("func", "higher"):
        fast, meta = split_parameters(model)
        loss = task_losses(model, fast, meta, lrs, batch, 1, False, backend).mean()
        parts = torch.autograd.grad(loss, [*model.parameters(), lrs])
        grads[backend] = torch.cat([g.flatten() for g in parts])
    diff = (grads["func"] - grads["higher"]).norm() / grads["higher"].norm()
    return {"relative_difference": float(diff)}


def _launch(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout:.0f} s (time limit)"}
    if done.returncode != 0:
        if done.returncode in (-9, 137):
            return {"error": "killed (out of memory?)"}
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"failed: {tail[:120]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cost_model(n_in: int, n_out: int, k: int, tasks: int, bytes_per: int = 4) -> dict[str, float]:
    u = n_out * n_in * k
    static = 4 * u * bytes_per  # U, its gradient, Adam's two moments
    per_task = 4 * tasks * n_out * n_in * bytes_per  # W', dL/dW and their adjoints
    return {"u_entries": u, "static": static, "per_task": per_task, "total": static + per_task}


def _available_bytes() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 2**62


def part_backends(args: argparse.Namespace) -> str:
    base = {"n_in": 70, "n_out": 68, "k": 3, "tasks": args.tasks, "device": args.device}
    base.update(threads=args.threads, budget_s=args.budget_s)
    rows = []
    results = {}
    for name, backend, solver, steps in (
        ("func (vmap)", "func", "sgd", args.steps),
        ("higher (loop)", "higher", "sgd", max(3, args.steps // 4)),
        ("func + ridge", "func", "ridge", args.steps),
    ):
        spec = {**base, "backend": backend, "solver": solver, "steps": steps}
        results[name] = _launch(spec, args.budget_s * 3 + 120)
    ref = results["higher (loop)"].get("seconds_per_step")
    for name, r in results.items():
        if "error" in r:
            rows.append(f"| {name} | - | - | - | - | {r['error']} |")
            continue
        sps = 1 / r["seconds_per_step"]
        speedup = f"{ref / r['seconds_per_step']:.1f}x" if ref else "-"
        rows.append(
            f"| {name} | {sps:.1f} | {1000 * r['seconds_per_step']:.1f} | "
            f"{r['peak_bytes'] / MIB:.1f} | {speedup} | {r['steps_timed']} steps timed |"
        )
    grad = _launch({**base, "mode": "gradient"}, args.budget_s * 3 + 120)
    if "error" in grad:
        grad_line = f"meta-gradient check failed: {grad['error']}"
    else:
        d = grad["relative_difference"]
        verdict = "within" if d <= 1e-5 else "ABOVE"
        grad_line = (
            f"relative difference of the func and higher meta-gradients (float64, same batch): "
            f"{d:.2e} ({verdict} the 1e-5 tolerance)"
        )
    mem = "peak GPU memory" if args.device.startswith("cuda") else "peak RSS growth"
    return "\n".join(
        [
            f"### (a) backends: conv1d 70 -> 68, MSR-FC k=3, {args.tasks} tasks/step "
            f"({args.device}, {args.threads} thread(s))",
            "",
            f"| backend | outer steps/s | ms/step | {mem} (MiB) | speed-up vs higher | note |",
            "|---|---:|---:|---:|---:|---|",
            *rows,
            "",
            grad_line,
        ]
    )


def part_sizes(args: argparse.Namespace) -> str:
    rows = []
    limit = min(args.memory_gib * GIB, _available_bytes())
    for n_in, n_out in ((70, 68), (256, 256), (1024, 1024)):
        for k in (3, 9):
            cost = _cost_model(n_in, n_out, k, args.tasks)
            lead = (
                f"| {n_in} -> {n_out} | {k} | {cost['u_entries']:,} | {cost['static'] / MIB:.1f} "
                f"| {cost['per_task'] / MIB:.1f} | {cost['total'] / MIB:.1f} |"
            )
            if cost["total"] > limit:
                rows.append(
                    f"{lead} - | - | - | memory: model needs {cost['total'] / GIB:.1f} GiB > "
                    f"{limit / GIB:.1f} GiB |"
                )
                continue
            spec = {"n_in": n_in, "n_out": n_out, "k": k, "tasks": args.tasks}
            spec.update(device=args.device, threads=args.threads, budget_s=args.budget_s)
            spec.update(backend="func", solver="sgd", steps=args.steps)
            r = _launch(spec, args.budget_s * 3 + 120)
            if "error" in r:
                rows.append(f"{lead} - | - | - | {r['error']} |")
                continue
            sps = 1 / r["seconds_per_step"]
            if r["time_limited"]:
                status = f"time: first step {r['first_step_s']:.1f} s > budget/3"
            else:
                status = "ok" if sps >= 1 else "below 1 step/s"
            rows.append(
                f"{lead} {r['peak_bytes'] / MIB:.1f} | {r['seconds_per_step']:.3f} | {sps:.2f} "
                f"| {status} |"
            )
    mem = "measured peak GPU" if args.device.startswith("cuda") else "measured peak RSS growth"
    return "\n".join(
        [
            f"### (b) MSR-FC layer size, func backend, {args.tasks} tasks/step "
            f"({args.device}, {args.threads} thread(s); budget {args.memory_gib:g} GiB)",
            "",
            "| layer | k | U entries | model: U+grad+Adam (MiB) | model: per-task graph (MiB) "
            f"| model: total (MiB) | {mem} (MiB) | s/step | steps/s | status |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            *rows,
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Outer-loop speed and memory tables.")
    parser.add_argument("--part", choices=["backends", "sizes", "all"], default="all")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--tasks", type=int, default=32, help="tasks per outer step")
    parser.add_argument("--steps", type=int, default=20, help="timed outer steps (at most)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--budget-s", type=float, default=30.0, help="timing budget per config")
    parser.add_argument("--memory-gib", type=float, default=24.0, help="memory budget")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker)
        result = _grad_worker(spec) if spec.get("mode") == "gradient" else _worker(spec)
        print(json.dumps(result))
        return
    if args.part in ("backends", "all"):
        print(part_backends(args), flush=True)
        print()
    if args.part in ("sizes", "all"):
        print(part_sizes(args), flush=True)


if __name__ == "__main__":
    main()
