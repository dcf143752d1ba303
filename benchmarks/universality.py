"""Expressivity of G-invariant networks by tensor order: fitting the Vandermonde product.

The target ``prod_{i<j} (x_i - x_j)`` on ``[-1, 1]^4`` is invariant under ``A_4`` and changes sign
under odd permutations. ``A_4`` has the same orbits on points and ordered pairs as ``S_4`` (its
2-closure is ``S_4``), so a first-order ``A_4``-invariant network is ``S_4``-invariant and its best
fit is the zero function; networks whose layers reach ``A_4``'s orbits on 3-tuples (its
determining order) can fit it. ``S_4``-invariant networks are the control: no order fits.

Run: ``python benchmarks/universality.py [--steps 600] [--seeds 2]``; prints a table and the
universality report of ``A_4``. Takes well under a minute on one CPU thread.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from sympy.combinatorics.named_groups import AlternatingGroup, SymmetricGroup

from metasym.analysis.invariant_nets import fit_invariant_network
from metasym.analysis.universality import format_report, orbit_count, universality_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--hidden", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)

    runs = [("A4", AlternatingGroup(4), order) for order in (1, 2, 3)]
    runs += [("S4", SymmetricGroup(4), order) for order in (1, 3)]
    header = f"{'group':>5} {'order':>5} {'max tuple':>9} {'orbits':>6} {'R2 mean':>8} "
    header += f"{'R2 min':>7} {'R2 max':>7} {'s/run':>6}"
    print(
        f"Vandermonde on [-1,1]^4: {args.n_train} train / 2000 test, {args.steps} Adam steps, "
        f"hidden {args.hidden}, seeds 0..{args.seeds - 1}"
    )
    print(header)
    print("-" * len(header))
    for name, group, order in runs:
        start = time.perf_counter()
        scores = [
            fit_invariant_network(
                group,
                order,
                n_train=args.n_train,
                steps=args.steps,
                hidden=args.hidden,
                seed=seed,
            )
            for seed in range(args.seeds)
        ]
        per_run = (time.perf_counter() - start) / args.seeds
        # A layer between orders a and b uses the orbits on (a + b)-tuples.
        print(
            f"{name:>5} {order:>5} {2 * order:>9} {orbit_count(group, 2 * order):>6} "
            f"{statistics.mean(scores):>8.3f} {min(scores):>7.3f} {max(scores):>7.3f} "
            f"{per_run:>6.1f}"
        )
    print()
    print(format_report(universality_report(AlternatingGroup(4))))


if __name__ == "__main__":
    main()
