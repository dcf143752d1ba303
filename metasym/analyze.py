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


def _named(name: str, order: int) -> str:
    return name if name.startswith("group of order") else f"{name} (order {order})"


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
            f"  true group: {_named(truth['group_name'], truth['group_order'])}; recovered group "
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


def _arguments(cfg: Any) -> dict[str, Any]:
    """Check the command-line settings of ``metasym-analyze``; refuse bad ones by name."""
    from omegaconf import OmegaConf

    if OmegaConf.is_missing(cfg, "run_dir"):
        raise MetasymError("run_dir is required: metasym-analyze run_dir=<a run folder>")
    args: dict[str, Any] = {"run_dir": str(cfg.run_dir)}
    for key in ("zero_tol", "tie_tol"):
        value = cfg.get(key)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if value is not None and not (number and value >= 0):
            raise MetasymError(f"{key} must be a number >= 0 or null (adaptive); got {value!r}")
        args[key] = None if value is None else float(value)
    samples = cfg.get("samples")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise MetasymError(f"samples must be a positive integer; got {samples!r}")
    args["samples"] = samples
    universality = cfg.get("universality")
    if not isinstance(universality, bool):
        raise MetasymError(f"universality must be true or false; got {universality!r}")
    args["universality"] = universality
    return args


def _hydra_main() -> None:
    import hydra
    from omegaconf import DictConfig

    conf_dir = str(Path(__file__).resolve().parent.parent / "conf")

    @hydra.main(version_base="1.3", config_path=conf_dir, config_name="analyze")
    def _main(cfg: DictConfig) -> None:
        from metasym.discovered import analyze_run

        try:
            summary = analyze_run(**_arguments(cfg))
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
