"""Main job: meta-train on a task family, evaluate on held-out tasks, write a run folder.

Run ``python -m metasym.train`` (or ``metasym-train``) with Hydra overrides, for example
``task=conv1d model=msr_fc meta.outer_steps=1000 baselines=all``. The run folder (under
``outputs/``) receives ``config.yaml``, ``metrics.json``, ``checkpoint.pt`` (one per baseline
too), ``sharing.png`` and ``curve.png``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from metasym.errors import MetasymError
from metasym.layers import SharedLinear
from metasym.loggers import make_logger
from metasym.meta import MetaConfig, MetaLearner
from metasym.models import MODEL_BUILDERS, MODELS, build_model
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
        names = [m for m in MODELS if m != main_model]
        if len(family.in_shape) != 1 or family.conv_padding is not None:
            names = [m for m in names if m != "lc"]  # lc is a 1D layer without wrap-around
        return names
    if isinstance(spec, str):
        spec = [spec]
    if not isinstance(spec, Sequence):
        raise MetasymError(f"baselines must be 'all', 'none' or a list of models; got {spec!r}")
    for name in spec:
        if name not in MODEL_BUILDERS:
            raise MetasymError(f"unknown baseline {name!r}; valid models: {', '.join(MODEL_BUILDERS)}")
    return [str(n) for n in spec if n != main_model]


def _mean_squared_target(learner: MetaLearner) -> float:
    return float(learner.test_batch().query_y.pow(2).mean())


def run(settings: dict[str, Any], run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Meta-train the configured model (and baselines) and write the run folder.

    Args:
        settings: the resolved configuration (``task``, ``model``, ``meta``, ``logger``,
            ``baselines``, ``device``, ``threads``), as plain containers.
        run_dir: the run folder to write into.
        progress: show progress bars.

    Returns:
        The contents of ``metrics.json``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if settings.get("threads"):
        torch.set_num_threads(int(settings["threads"]))
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
    for index, name in enumerate([model_name, *baselines]):
        opts = model_opts if name == model_name else {}
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            model = build_model(name, family, **opts)
        learner = MetaLearner(model, family, config)
        ckpt = run_dir / ("checkpoint.pt" if index == 0 else f"checkpoint_{name}.pt")
        bar = tqdm(
            total=config.outer_steps, desc=f"{family.name}/{name}", disable=not progress, leave=True
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
        if index == 0:
            main_learner = learner
            plot_curve(learner.history, run_dir / "curve.png", title=f"{name} on {family.name}")
    assert main_learner is not None

    metrics["mean_squared_target"] = _mean_squared_target(main_learner)
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
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    logger.log_table(
        "methods",
        ["method", "mse", "ci95"],
        [[m, r["mse"], r["ci95"]] for m, r in metrics["methods"].items()],
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
    lines = [f"task {metrics['task']}  (mean squared target {metrics['mean_squared_target']:.3f})"]
    lines.append(f"{'method':<10} {'query MSE':>10} {'95% CI':>9} {'train s':>8}")
    for name, r in metrics["methods"].items():
        lines.append(f"{name:<10} {r['mse']:>10.4f} {r['ci95']:>9.4f} {r['train_seconds']:>8.1f}")
    if "band_energy" in metrics:
        lines.append(
            f"energy of reshape(U v) on the true support: {100 * metrics['band_energy']:.2f}%"
        )
    return "\n".join(lines)


def _hydra_main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    conf_dir = str(Path(__file__).resolve().parent.parent / "conf")

    @hydra.main(version_base="1.3", config_path=conf_dir, config_name="config")
    def _main(cfg: DictConfig) -> None:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        settings = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(settings, dict)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        metrics = run({str(k): v for k, v in settings.items()}, run_dir)
        print(format_table(metrics))
        print(f"run folder: {run_dir}")

    _main()


def main() -> None:
    """Console entry point (``metasym-train``)."""
    _hydra_main()


if __name__ == "__main__":
    main()
