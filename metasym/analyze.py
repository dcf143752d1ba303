"""Entry point: analyse a run folder's learned sharing (``python -m metasym.analyze run_dir=...``).

Writes ``symmetry.json``, ``partition.png`` and ``group.png`` into the run folder and prints a
short report: the tie partition and its agreement with the truth, the recovered group (order,
name, relation to the true group), equivariance errors, and universality of invariant networks
for the group.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from metasym.errors import MetasymError

__all__ = ["format_report", "main"]


def format_report(summary: dict[str, Any]) -> str:
    """The report printed by ``metasym-analyze`` (and at the end of ``metasym-train``)."""
    group, truth, eq = summary["group"], summary["truth"], summary["equivariance"]
    part = summary["partition"]
    lines = [f"symmetry of the learned sharing ({summary['task']}, step {summary['step']})"]
    lines.append(
        f"  tie partition: {part['num_classes']} classes, {part['unconnected']} unconnected weights"
    )
    if "partition_distance" in truth:
        lines.append(
            f"  against the truth: partition distance {truth['partition_distance']}, "
            f"adjusted Rand index {truth['adjusted_rand_index']:.4f}"
        )
    lines.append(f"  {group['summary']}")
    if "relation" in truth:
        lines.append(
            f"  true group: {truth['group_name']} (order {truth['group_order']}); recovered group "
            f"is {truth['relation']}" + (" to it" if truth["relation"] == "equal" else "")
        )
    lines.append(
        f"  equivariance error under the recovered group: learned {eq['learned']:.2e}, "
        f"snapped {eq['snapped']:.2e}"
    )
    if "learned_under_true_group" in eq:
        lines.append(
            "  equivariance error under the true group: "
            f"learned {eq['learned_under_true_group']:.2e}, "
            f"snapped {eq['snapped_under_true_group']:.2e}"
        )
    uni = summary.get("universality")
    if uni:
        from metasym.analysis.universality import format_report as format_universality

        lines.append("  universality of invariant networks for the group's action on the inputs:")
        lines.extend("    " + line for line in format_universality(uni).splitlines())
    return "\n".join(lines)


def _hydra_main() -> None:
    import hydra
    from omegaconf import DictConfig

    conf_dir = str(Path(__file__).resolve().parent.parent / "conf")

    @hydra.main(version_base="1.3", config_path=conf_dir, config_name="analyze")
    def _main(cfg: DictConfig) -> None:
        from metasym.discovered import analyze_run

        try:
            summary = analyze_run(
                str(cfg.run_dir),
                zero_tol=cfg.zero_tol,
                tie_tol=cfg.tie_tol,
                samples=int(cfg.samples),
                universality=bool(cfg.universality),
            )
        except MetasymError as err:
            print(f"metasym-analyze: error: {err}", file=sys.stderr)
            sys.exit(2)
        print(format_report(summary))
        print(f"wrote {Path(str(cfg.run_dir)) / 'symmetry.json'}, partition.png, group.png")

    _main()


def main() -> None:
    """Console entry point (``metasym-analyze``)."""
    _hydra_main()


if __name__ == "__main__":
    main()
