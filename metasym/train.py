"""Main job: meta-train on a task family, evaluate on held-out tasks, write a run folder.

Run ``python -m metasym.train`` (or ``metasym-train``) with Hydra overrides, for example
``task=conv1d model=msr_fc meta.outer_steps=1000 baselines=all``. The run folder (under
``outputs/``) receives ``config.yaml``, ``metrics.json``, ``checkpoint.pt`` (one per baseline
too), ``sharing.png`` and ``curve.png``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from tqdm.auto import tqdm

from metasym.errors import MetasymError
from metasym.layers import SharedLinear
from metasym.loggers import make_logger
from metasym.meta import MetaConfig, MetaLearner, load_checkpoint
from metasym.models import MODEL_BUILDERS, build_model
from metasym.plots import plot_curve, plot_sharing
from tasks import make_family
from tasks.base import TaskFamily

__all__ = ["main", "run"]

log = logging.getLogger(__name__)


def _baseline_names(spec: Any, family: TaskFamily, main_model: str) -> list[str]:
    """Resolve the ``baselines`` setting: ``[]``, ``"all"``/``"none"``, or a list of model names."""
    if spec in (None, "none", "", []):
        return []
    if spec == "all":
        return [m for m in family.models if m != main_model]
    if isinstance(spec, str):
        spec = [spec]
    if not isinstance(spec, Sequence):
        raise MetasymError(f"baselines must be 'all', 'none' or a list of models; got {spec!r}")
    for name in spec:
        if name not in MODEL_BUILDERS:
            raise MetasymError(
                f"unknown baseline {name!r}; valid models: {', '.join(MODEL_BUILDERS)}"
            )
    return [str(n) for n in spec if n != main_model]


def _mean_squared_target(learner: MetaLearner) -> float:
    return float(learner.test_batch().query_y.pow(2).mean())


# meta settings that may change between a run and its resumption: they do not change the model
RESUMABLE_META_KEYS = frozenset(
    {"outer_steps", "eval_every", "checkpoint_every", "eval_tasks", "backend"}
)


def _check_resumable(state: dict[str, Any], settings: dict[str, Any], path: Path) -> None:
    """Refuse to resume from a checkpoint whose task, model or meta settings differ."""
    saved = {
        "task": state.get("metadata", {}).get("task"),
        "model": state.get("metadata", {}).get("model"),
    }
    diffs = [
        f"{k} (run: {saved[k]}, now: {dict(settings[k])})"
        for k in ("task", "model")
        if saved[k] != dict(settings[k])
    ]
    old_meta = dict(state.get("config", {}))
    new_meta = asdict(MetaConfig(**settings["meta"]))
    diffs += [
        f"meta.{k} (run: {old_meta.get(k)!r}, now: {new_meta.get(k)!r})"
        for k in sorted(set(old_meta) | set(new_meta))
        if k not in RESUMABLE_META_KEYS and old_meta.get(k) != new_meta.get(k)
    ]
    if diffs:
        raise MetasymError(
            f"cannot resume {str(path)!r}: {'; '.join(diffs)} differ from the checkpoint's run. "
            "Resume with the run's own overrides (see its config.yaml); only "
            f"{', '.join(sorted('meta.' + k for k in RESUMABLE_META_KEYS))} may change"
        )
    if new_meta["outer_steps"] < int(state.get("step", 0)):
        raise MetasymError(
            f"cannot resume {str(path)!r} with meta.outer_steps={new_meta['outer_steps']}: the run "
            f"is already at step {state['step']}; give at least that many"
        )


def run(
    settings: dict[str, Any], run_dir: str | Path, progress: bool = True, resume: bool = False
) -> dict[str, Any]:
    """Meta-train the configured model (and baselines) and write the run folder.

    Args:
        settings: the resolved configuration (``task``, ``model``, ``meta``, ``logger``,
            ``baselines``, ``analyze``, ``device``, ``threads``), as plain containers.
        run_dir: the run folder to write into. A folder that already holds a run is refused
            unless ``resume`` is set.
        progress: show progress bars.
        resume: continue the run in ``run_dir`` from its checkpoints (the task, model and meta
            settings must match; ``meta.outer_steps`` may grow).

    Returns:
        The contents of ``metrics.json``.
    """
    run_dir = Path(run_dir)
    if resume and not (run_dir / "checkpoint.pt").is_file():
        raise MetasymError(
            f"cannot resume {str(run_dir)!r}: it holds no checkpoint.pt, so it is not a run folder"
        )
    if not resume and any((run_dir / f).exists() for f in ("checkpoint.pt", "metrics.json")):
        raise MetasymError(
            f"run folder {str(run_dir)!r} already holds a run; resume it (resume={run_dir}) or "
            "choose a new folder"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    threads = settings.get("threads")
    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise MetasymError(f"threads must be a positive integer or null; got {threads!r}")
        torch.set_num_threads(threads)
    if settings.get("device", "cpu") != "cpu":
        raise MetasymError(
            f"device {settings['device']!r} is not supported by the main job yet; valid: cpu"
        )

    task_opts = dict(settings["task"])
    family = make_family(task_opts.pop("name"), **task_opts)
    model_opts = dict(settings["model"])
    model_name = model_opts.pop("name")
    meta_opts = dict(settings["meta"])
    try:
        config = MetaConfig(**meta_opts)
    except TypeError as err:
        raise MetasymError(f"bad meta settings: {err}") from err
    baselines = _baseline_names(settings.get("baselines", []), family, model_name)

    logger_opts = dict(settings.get("logger") or {"name": "none"})
    logger = make_logger(logger_opts.pop("name"), settings, run_dir, **logger_opts)

    metrics: dict[str, Any] = {"task": family.name, "model": model_name, "methods": {}}
    main_learner: MetaLearner | None = None
    histories: dict[str, list[dict[str, float]]] = {}
    for index, name in enumerate([model_name, *baselines]):
        opts = model_opts if name == model_name else {}
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            model = build_model(name, family, **opts)
        learner = MetaLearner(model, family, config)
        learner.metadata = {"task": dict(settings["task"]), "model": {"name": name, **opts}}
        ckpt = run_dir / ("checkpoint.pt" if index == 0 else f"checkpoint_{name}.pt")
        if resume and ckpt.is_file():
            state = load_checkpoint(ckpt)
            _check_resumable(state, {**settings, "model": learner.metadata["model"]}, ckpt)
            learner.load_state_dict(state)
        bar = tqdm(
            total=config.outer_steps,
            initial=learner.step_count,
            desc=f"{family.name}/{name}",
            disable=not progress,
            leave=True,
        )

        def on_step(step: int, loss: float, bar: tqdm = bar, name: str = name) -> None:
            bar.update(1)
            if step % 10 == 0 or step == config.outer_steps:
                bar.set_postfix(query_loss=f"{loss:.4f}")
                logger.log({f"{name}/train_loss": loss}, step=step)

        start = time.perf_counter()
        try:
            learner.fit(callback=on_step, checkpoint=ckpt)
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        result = learner.evaluate()
        metrics["methods"][name] = {**result.as_dict(), "train_seconds": round(seconds, 2)}
        logger.log({f"{name}/test_mse": result.mean, f"{name}/test_ci95": result.ci95})
        histories[name] = learner.history
        if index == 0:
            main_learner = learner
    assert main_learner is not None
    plot_curve(histories, run_dir / "curve.png", title=f"meta-training on {family.name}")

    if family.loss == "mse":
        target = _mean_squared_target(main_learner)
        metrics["mean_squared_target"] = target
        for name, result in metrics["methods"].items():
            if result["mse"] > 2 * target:
                result["diverged"] = True
                log.warning(
                    "%s ends with query MSE %.3g, above twice the mean squared target %.3g: "
                    "training diverged; lower meta.outer_lr or meta.inner_lr",
                    name,
                    result["mse"],
                    target,
                )
    metrics["outer_steps"] = config.outer_steps
    metrics["inner_lrs"] = main_learner.inner_lrs.detach().tolist()
    if isinstance(main_learner.model, SharedLinear):
        layer = main_learner.model
        plot_sharing(
            layer.U,
            layer.out_features,
            layer.in_features,
            run_dir / "sharing.png",
            title=f"{model_name} on {family.name}",
        )
        metrics["band_energy"] = _partition_energy(layer, family)
        logger.log_image("sharing", run_dir / "sharing.png")
    if settings.get("analyze", True) and isinstance(main_learner.model, SharedLinear):
        from metasym.discovered import analyze_run, symmetry_summary

        summary = analyze_run(run_dir)
        group = summary["group"]
        metrics["symmetry"] = symmetry_summary(summary)
        logger.log_table(
            "discovered_group",
            ["name", "order", "relation_to_truth", "generators"],
            [
                [
                    group["name"],
                    group["order"],
                    summary["truth"].get("relation"),
                    json.dumps(group["generators"]),
                ]
            ],
        )
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    logger.log_table(
        "methods",
        ["method", "mse", "ci95"],
        [[m, r.get("mse", r.get("loss")), r["ci95"]] for m, r in metrics["methods"].items()],
    )
    logger.finish()
    return metrics


def _partition_energy(layer: SharedLinear, family: TaskFamily, probes: int = 64) -> float:
    """Share of the energy of ``reshape(U v)``, random ``v``, on the family's true support."""
    support = family.true_partition() >= 0  # (o, i)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(probes, layer.latent, generator=gen)
    with torch.no_grad():
        w = (layer.U @ v.T).T.view(probes, layer.out_features, layer.in_features)
    energy = w.pow(2)
    return float(energy[:, support].sum() / energy.sum())


def format_table(metrics: dict[str, Any]) -> str:
    """The comparison table printed at the end of a run."""
    target = metrics.get("mean_squared_target")
    lines = [
        f"task {metrics['task']}" + (f"  (mean squared target {target:.3f})" if target else "")
    ]
    lines.append(f"{'method':<10} {'query loss':>10} {'95% CI':>9} {'train s':>8}")
    for name, r in metrics["methods"].items():
        loss = r.get("mse", r.get("loss", float("nan")))
        line = f"{name:<10} {loss:>10.4f} {r['ci95']:>9.4f} {r['train_seconds']:>8.1f}"
        if "accuracy" in r:
            line += f"   accuracy {100 * r['accuracy']:.1f}% +- {100 * r['accuracy_ci95']:.1f}"
        if r.get("diverged"):
            line += "   DIVERGED (above twice the mean squared target)"
        lines.append(line)
    if "band_energy" in metrics:
        lines.append(
            f"energy of reshape(U v) on the true support: {100 * metrics['band_energy']:.2f}%"
        )
    return "\n".join(lines)


def _latest_run(root: Path) -> Path:
    """The most recently written run folder under ``root`` that holds a checkpoint."""
    runs = sorted(root.glob("**/checkpoint.pt"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise MetasymError(
            f"resume=true found no run folder with a checkpoint.pt under {str(root)!r}"
        )
    return runs[-1].parent


def _run_dir(resume: Any, default: str) -> str:
    """Hydra's run folder: a new one, or the folder being resumed (``resume=true`` or a path)."""
    if resume in (None, False, "false", ""):
        return default
    if resume in (True, "true"):
        return str(_latest_run(Path("outputs")))
    return str(resume)


def _drop_if_empty(run_dir: Path) -> None:
    """Remove a run folder that a refused run left empty (Hydra creates it before the job)."""
    try:
        run_dir.rmdir()  # only succeeds when empty
    except OSError:
        pass


def _register_schemas() -> None:
    """Typed schemas, so that Hydra refuses misspelled or ill-typed keys before a run starts."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="meta", name="schema", node=MetaConfig)


def _hydra_main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    if not OmegaConf.has_resolver("metasym_run_dir"):
        OmegaConf.register_new_resolver("metasym_run_dir", _run_dir)
    _register_schemas()
    conf_dir = str(Path(__file__).resolve().parent.parent / "conf")

    @hydra.main(version_base="1.3", config_path=conf_dir, config_name="config")
    def _main(cfg: DictConfig) -> None:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        settings = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(settings, dict)
        resume = settings.pop("resume", None) not in (None, False, "false", "")
        try:
            metrics = run({str(k): v for k, v in settings.items()}, run_dir, resume=resume)
        except MetasymError as err:
            _drop_if_empty(run_dir)
            print(f"metasym-train: error: {err}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print(
                f"\nmetasym-train: interrupted; the checkpoint in {run_dir} holds the last "
                f"finished step. Continue with: resume={run_dir} (and the same overrides)",
                file=sys.stderr,
            )
            sys.exit(130)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        print(format_table(metrics))
        if "symmetry" in metrics and (run_dir / "symmetry.json").is_file():
            from metasym.analyze import format_report

            symmetry = json.loads((run_dir / "symmetry.json").read_text())
            symmetry["partition"].pop("labels", None)
            print(format_report(symmetry))
        print(f"run folder: {run_dir}")

    _main()


def main() -> None:
    """Console entry point (``metasym-train``)."""
    _hydra_main()


if __name__ == "__main__":
    main()


class AggregateSweep(Callback):
    """Hydra callback: after a multirun, write one table and plot over all of its run folders.

    Registered in ``conf/config.yaml`` under ``hydra.callbacks``; writes ``results.md`` and
    ``results.png`` into the sweep folder and prints the table.
    """

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from metasym.aggregate import aggregate

        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            table = aggregate([sweep_dir], sweep_dir / "results.md", sweep_dir / "results.png")
        except MetasymError as err:  # e.g. every job of the sweep failed
            print(f"metasym-train: no aggregated table: {err}", file=sys.stderr)
            return
        print(table)
        print(f"aggregated table: {sweep_dir / 'results.md'} (plot: results.png)")
