"""Read a finished run: analyse its learned sharing, and load the discovered layer for reuse.

``analyze_run(run_dir)`` writes ``symmetry.json`` (tie partition scores, the recovered group, its
relation to the truth, equivariance errors, universality of invariant networks for it) and two
figures. ``load_layer(run_dir)`` returns the learned layer as an ``nn.Module`` with ``U`` frozen,
ready to go into any model; ``snap=True`` replaces ``U`` by the exact sharing of the recovered
group (arXiv 2007.02933: a layer tied along a group's orbits is that group's convolution).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metasym import groups
from metasym.analysis.report import analyze_sharing, group_from_json
from metasym.errors import MetasymError
from metasym.layers import SharedLinear
from metasym.meta.trainer import load_checkpoint
from tasks import make_family
from tasks.base import TaskFamily

__all__ = ["RunInfo", "analyze_run", "load_layer", "read_run", "symmetry_summary"]

log = logging.getLogger(__name__)

# universality tables enumerate the group's elements; beyond this order they are skipped
MAX_UNIVERSALITY_ORDER = 50_000


@dataclass
class RunInfo:
    """What a run folder holds about its learned layer."""

    run_dir: Path
    state: dict[str, Any]
    family: TaskFamily
    layer: SharedLinear


def read_run(run_dir: str | Path) -> RunInfo:
    """Open a run folder written by ``metasym.train`` and rebuild its learned ``SharedLinear``.

    Raises:
        MetasymError: the folder is missing, holds no readable checkpoint, or its model is not an
            MSR layer with a sharing matrix.
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise MetasymError(f"{str(run_dir)!r} is a file; give the run folder that holds it")
    if not run_dir.is_dir():
        raise MetasymError(f"run folder {str(run_dir)!r} does not exist")
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.is_file():
        raise MetasymError(
            f"{str(run_dir)!r} is not a run folder: it holds no checkpoint.pt "
            "(run metasym-train first)"
        )
    state = load_checkpoint(ckpt)
    if state.get("model_class") != "SharedLinear":
        raise MetasymError(
            f"run {str(run_dir)!r} trained a {state.get('model_class')!r} model; only msr_fc runs "
            "(SharedLinear) carry a sharing matrix to analyse"
        )
    meta = state.get("metadata") or {}
    if "task" not in meta:
        raise MetasymError(
            f"checkpoint in {str(run_dir)!r} does not record its task; it is too old"
        )
    task = dict(meta["task"])
    family = make_family(task.pop("name"), **task)
    weights = state["model"]
    U = weights["U"]
    n_out, n_in = family.out_features, family.in_features
    if U.ndim != 2 or U.shape[0] != n_out * n_in:
        raise MetasymError(
            f"checkpoint's U has shape {tuple(U.shape)}; the task needs ({n_out * n_in}, k)"
        )
    layer = SharedLinear(n_in, n_out, int(U.shape[1]), bias="bias_U" in weights)
    layer.load_state_dict(weights)
    return RunInfo(run_dir, state, family, layer)


def _universality(group_json: dict[str, Any], n_out: int) -> dict[str, Any] | None:
    """Universality tables for the recovered group's action on the inputs, when affordable."""
    if not group_json["exact_symmetry"] or group_json["order"] > MAX_UNIVERSALITY_ORDER:
        return None
    from metasym.analysis.universality import universality_report

    layer_group = group_from_json(group_json["generators"], n_out + group_json["n_in"])
    _, on_inputs = groups.split_action(layer_group, n_out)
    report = universality_report(on_inputs, max_order=3, molien_degree=8)
    report["orbit_counts"] = {str(k): v for k, v in report["orbit_counts"].items()}
    return report


def analyze_run(
    run_dir: str | Path,
    zero_tol: float | None = None,
    tie_tol: float | None = None,
    samples: int = 32,
    universality: bool = True,
) -> dict[str, Any]:
    """Analyse a run's learned sharing; write ``symmetry.json``, ``partition.png``, ``group.png``.

    Args:
        run_dir: a run folder with an msr_fc checkpoint.
        zero_tol: row length below which a weight is unconnected (``None``: adaptive).
        tie_tol: distance below which rows of ``U`` are tied (``None``: adaptive).
        samples: random draws for the equivariance errors.
        universality: add universality tables for the recovered group's action on the inputs.

    Returns:
        The contents of ``symmetry.json`` without the partition labels (they are in the file).
    """
    from metasym.plots import plot_group, plot_partition

    info = read_run(run_dir)
    fam, layer = info.family, info.layer
    result = analyze_sharing(
        layer.U.detach(),
        layer.out_features,
        layer.in_features,
        true_partition=fam.true_partition(),
        true_group=fam.true_group(),
        zero_tol=zero_tol,
        tie_tol=tie_tol,
        samples=samples,
    )
    result["task"] = fam.name
    result["step"] = int(info.state["step"])
    if universality:
        result["universality"] = _universality(result["group"], layer.out_features)
    labels = torch.tensor(result["partition"]["labels"])
    true = fam.true_partition()
    plot_partition(labels, true, info.run_dir / "partition.png", title=f"tie partition, {fam.name}")
    plot_group(result["group"], fam, info.run_dir / "group.png")
    out = info.run_dir / "symmetry.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(out)
    summary = {k: v for k, v in result.items() if k != "partition"}
    summary["partition"] = {k: v for k, v in result["partition"].items() if k != "labels"}

    # keep metrics.json telling the same story as symmetry.json
    metrics_path = info.run_dir / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        metrics["symmetry"] = symmetry_summary(summary)
        tmp = metrics_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(metrics, indent=2))
        tmp.replace(metrics_path)
    return summary


def symmetry_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The short form of an analysis kept in ``metrics.json``."""
    group, truth = summary["group"], summary["truth"]
    return {
        "summary": group["summary"],
        "order": group["order"],
        "name": group["name"],
        "step": summary["step"],
        **{k: truth[k] for k in ("relation", "partition_distance") if k in truth},
    }


def load_layer(run_dir: str | Path, snap: bool = False) -> SharedLinear:
    """The discovered layer of a run, as an ``nn.Module`` with its sharing frozen.

    Args:
        run_dir: a run folder with an msr_fc checkpoint.
        snap: use the exact sharing of the group recovered by ``analyze_run`` (read from
            ``symmetry.json``, analysing the run first if it is missing) instead of the learned
            ``U``: one 0/1 column per orbit of the group on weight positions, keeping only the
            orbits the learned layer connects (so a local filter stays local). The filter ``v``
            starts at the least-squares fit of the learned initial weight.

    Returns:
        A ``SharedLinear`` whose ``U`` is a buffer; only ``v`` (and a tied bias) train.

    Example:
        >>> layer = load_layer("outputs/2026-12-04/12-00-00_conv1d_msr_fc")  # doctest: +SKIP
        >>> head = torch.nn.Linear(layer.out_features, 1)  # doctest: +SKIP
        >>> model = torch.nn.Sequential(layer, torch.nn.ReLU(), head)  # doctest: +SKIP

    Warns:
        UserWarning: with ``snap=True``, when the recovered group differs from the task's true
            group (training has not settled; snapping would impose the wrong symmetry).
    """
    info = read_run(run_dir)
    learned = info.layer
    n_out, n_in = learned.out_features, learned.in_features
    if not snap:
        U = learned.U.detach()
        v = learned.v.detach()
    else:
        path = info.run_dir / "symmetry.json"
        sym = json.loads(path.read_text()) if path.is_file() else None
        if sym is None:
            analyze_run(info.run_dir, universality=False)
            sym = json.loads(path.read_text())
        if not sym["group"]["exact_symmetry"]:
            raise MetasymError(
                f"run {str(run_dir)!r} has no exact symmetry to snap to; use snap=False"
            )
        relation = sym.get("truth", {}).get("relation")
        if relation not in (None, "equal"):
            warnings.warn(
                f"the recovered group ({sym['group']['name']}) is a {relation} of the task's true "
                f"group ({sym['truth']['group_name']}); snapping imposes it anyway. Train longer "
                "(or with meta.lr_schedule=cosine) for the exact symmetry.",
                stacklevel=2,
            )
        group = group_from_json(sym["group"]["generators"], n_out + n_in)
        orbits = groups.pair_orbits(group, n_out, n_in).reshape(-1)  # (o*i,)
        connected = torch.tensor(sym["partition"]["labels"]).reshape(-1) >= 0
        # the group preserves the partition, so each orbit is wholly connected or wholly not
        keep = torch.unique(orbits[connected])
        U = (orbits[:, None] == keep[None, :]).to(torch.get_default_dtype())  # (o*i, k)
        w0 = learned.weight().detach().reshape(-1, 1).to(U.dtype)
        v = torch.linalg.lstsq(U, w0).solution.reshape(-1)
    layer = SharedLinear(n_in, n_out, int(U.shape[1]), bias=learned.bias_U is not None, sharing=U)
    with torch.no_grad():
        layer.v.copy_(v)
        if learned.bias_U is not None and learned.bias_v is not None:
            assert layer.bias_U is not None and layer.bias_v is not None
            # the learned initial bias as one frozen direction whose scale v_b[0] trains
            layer.bias_U.zero_()
            layer.bias_U[:, 0] = learned.bias_U @ learned.bias_v
            layer.bias_v.zero_()
            layer.bias_v[0] = 1.0
    if layer.bias_U is not None:
        layer.bias_U.requires_grad_(False)  # part of the discovered sharing, like U
    return layer
