"""MSR-conv against the built-in group convolution and a plain convolution on C4 / D4 tasks.

Every task is a lifting group convolution of a 15x15 image with two random 3x3 filters and zero
padding (``tasks.rotations2d``); inputs are ``N(0, 1)`` pixels or centred scikit-learn digits. Three
single-layer models are meta-trained with one ``MetaConfig`` (MSR, arXiv 2007.02933):

- ``msr_conv``: kernel ``reshape(U v)`` over all ``2 |G|`` output channels, ``U`` meta-learned;
- ``gconv``: the same layer with ``U`` fixed to the group's sharing (the symmetry built in);
- ``conv2d``: a plain zero-padded convolution with ``2 |G|`` free filters (MAML-conv).

The table gives query MSE on held-out tasks with a 95% interval, the ratio of MSR-conv's error
to the group convolution's, and the share of the learned ``U``'s energy inside the span of the
true sharing (1: every kernel MSR-conv can produce is a group convolution).

Run: ``python benchmarks/rotations2d.py [--steps 1000] [--groups c4 d4] [--inputs random digits]``.
The defaults take about three minutes on one CPU thread.
"""

from __future__ import annotations

import argparse
import time

import torch

import tasks
from metasym.gconv import lifting_sharing, span_energy
from metasym.meta import MetaConfig, MetaLearner
from metasym.models import build_model

MODELS = ("msr_conv", "gconv", "conv2d")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", nargs="+", default=["c4", "d4"], choices=["c4", "d4"])
    parser.add_argument("--inputs", nargs="+", default=["random", "digits"])
    parser.add_argument("--steps", type=int, default=1000, help="outer steps")
    parser.add_argument("--tasks-per-step", type=int, default=16)
    parser.add_argument("--outer-lr", type=float, default=1e-2)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--n-support", type=int, default=1)
    parser.add_argument("--n-query", type=int, default=4)
    parser.add_argument("--eval-tasks", type=int, default=300)
    parser.add_argument("--size", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = MetaConfig(
        outer_steps=args.steps,
        tasks_per_step=args.tasks_per_step,
        outer_lr=args.outer_lr,
        inner_steps=args.inner_steps,
        n_support=args.n_support,
        n_query=args.n_query,
        eval_tasks=args.eval_tasks,
        seed=args.seed,
    )
    print(
        f"rotations2d, {args.size}x{args.size} images, 2 filters a task; {args.steps} outer "
        f"steps x {args.tasks_per_step} tasks, outer lr {args.outer_lr}, {args.inner_steps} "
        f"inner SGD step(s) on {args.n_support} support image(s), {args.n_query} query images, "
        f"{args.eval_tasks} test tasks, seed {args.seed}"
    )
    print()
    print(
        "| group | inputs | mean sq. target | msr_conv | gconv | conv2d | msr/gconv "
        "| U in G-span | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for group in args.groups:
        for inputs in args.inputs:
            family = tasks.make_family("rotations2d", group=group, inputs=inputs, size=args.size)
            results, seconds, energy = {}, 0.0, float("nan")
            for name in MODELS:
                torch.manual_seed(args.seed)
                learner = MetaLearner(build_model(name, family), family, config)
                start = time.perf_counter()
                learner.fit()
                seconds += time.perf_counter() - start
                results[name] = learner.evaluate()
                if name == "msr_conv":
                    reference = lifting_sharing(group, family.out_channels)
                    energy = span_energy(learner.model.U, reference)
            target = learner.test_batch().query_y.pow(2).mean().item()
            cells = " | ".join(f"{results[m].mean:.4f} ± {results[m].ci95:.4f}" for m in MODELS)
            ratio = results["msr_conv"].mean / results["gconv"].mean
            print(
                f"| {group.upper()} | {inputs} | {target:.3f} | {cells} | {ratio:.2f} "
                f"| {100 * energy:.2f}% | {seconds:.0f} |"
            )


if __name__ == "__main__":
    main()
