import json
import subprocess
import sys
from pathlib import Path

import pytest

from metasym.errors import MetasymError
from metasym.train import format_table, run

ROOT = Path(__file__).resolve().parent.parent


def _settings(**over):
    settings = {
        "task": {"name": "conv1d", "n_in": 12, "kernel_size": 3, "circular": False},
        "model": {"name": "msr_fc", "latent": None, "bias": False},
        "meta": {"outer_steps": 30, "eval_tasks": 20, "eval_every": 10, "checkpoint_every": 10},
        "logger": {"name": "none"},
        "baselines": [],
    }
    settings.update(over)
    return settings


def test_run_writes_the_run_folder_and_compares_baselines(tmp_path):
    metrics = run(_settings(baselines="all"), tmp_path, progress=False)  # msr_fc + 3 baselines
    for name in (
        "metrics.json",
        "checkpoint.pt",
        "checkpoint_dense.pt",
        "sharing.png",
        "curve.png",
    ):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert set(saved["methods"]) == {"msr_fc", "dense", "conv", "lc"}
    for result in saved["methods"].values():
        assert result["tasks"] == 20 and result["mse"] > 0 and result["ci95"] > 0
    assert 0.0 <= saved["band_energy"] <= 1.0
    assert "msr_fc" in format_table(saved)


@pytest.mark.parametrize(
    ("over", "fragment"),
    [
        ({"task": {"name": "rotations3d"}}, "unknown task 'rotations3d'"),
        ({"model": {"name": "transformer"}}, "unknown model 'transformer'"),
        ({"model": {"name": "msr_fc", "latent": 0}}, "latent must be a positive integer; got 0"),
        ({"meta": {"n_support": 0}}, "n_support must be a positive integer; got 0"),
        ({"meta": {"outer_step": 3}}, "bad meta settings"),
        ({"baselines": ["resnet"]}, "unknown baseline 'resnet'"),
        ({"logger": {"name": "tensorboard"}}, "unknown logger 'tensorboard'"),
    ],
)
def test_bad_settings_are_refused_before_training(tmp_path, over, fragment):
    with pytest.raises(MetasymError, match=fragment):
        run(_settings(**over), tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_hydra_entry_point_runs_with_overrides(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "metasym.train",
        "task=conv1d",
        "task.n_in=10",
        "meta.outer_steps=5",
        "meta.eval_tasks=10",
        "baselines=[conv]",
        f"hydra.run.dir={out}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "msr_fc" in done.stdout and "conv" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["outer_steps"] == 5 and set(metrics["methods"]) == {"msr_fc", "conv"}
    assert "outer_steps: 5" in (out / "config.yaml").read_text()


def test_classification_runs_report_accuracy(tmp_path):
    settings = {
        "task": {"name": "aug_digits", "n_way": 3, "k_shot": 1, "n_query_per_class": 2},
        "model": {"name": "fewshot_maml_conv"},
        "meta": {
            "outer_steps": 3,
            "tasks_per_step": 2,
            "eval_tasks": 6,
            "loss": "cross_entropy",
            "n_support": 3,
            "n_query": 6,
        },
        "logger": {"name": "none"},
        "baselines": "all",
    }
    metrics = run(settings, tmp_path, progress=False)
    assert set(metrics["methods"]) == {"fewshot_maml_conv", "fewshot_msr_conv"}
    for result in metrics["methods"].values():
        assert 0.0 <= result["accuracy"] <= 1.0 and result["loss"] > 0
    assert "accuracy" in format_table(metrics)


def test_a_sweep_of_four_models_and_two_seeds_yields_one_table(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "metasym.train",
        "-m",
        "task=conv1d",
        "task.n_in=10",
        "model=msr_fc,dense,conv,lc",
        "meta.seed=0,1",
        "meta.outer_steps=3",
        "meta.eval_tasks=5",
        "analyze=false",
        f"hydra.sweep.dir={tmp_path}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = (tmp_path / "results.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| conv1d")]
    assert len(rows) == 4 and all("| 2 |" in row for row in rows)  # 4 models, 2 seeds each
    assert len(list(tmp_path.glob("*/metrics.json"))) == 8
    assert (tmp_path / "results.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("over", "fragment"),
    [
        ({"threads": -2}, "threads must be a positive integer or null; got -2"),
        ({"meta": {"loss": "cross_entropy"}}, "loss 'cross_entropy' does not fit task 'conv1d'"),
        ({"device": "banana"}, "device 'banana' is not supported"),
    ],
)
def test_more_bad_settings_are_refused(tmp_path, over, fragment):
    with pytest.raises(MetasymError, match=fragment):
        run(_settings(**over), tmp_path, progress=False)
