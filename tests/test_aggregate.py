import json
import math

import pytest
from scipy.stats import t as student_t

from metasym.aggregate import aggregate, find_runs, load_run, main, summarize
from metasym.errors import MetasymError


def _run(root, name, task, model, seed, steps, mse, latent=None, baselines=None, target=3.0):
    folder = root / name
    folder.mkdir(parents=True)
    latent_line = f"\n  latent: {'null' if latent is None else latent}" if model == "msr_fc" else ""
    folder.joinpath("config.yaml").write_text(
        f"task:\n  name: {task}\nmodel:\n  name: {model}{latent_line}\n"
        f"meta:\n  outer_steps: {steps}\n  seed: {seed}\n"
    )
    methods = {model: {"mse": mse, "ci95": 0.1, "tasks": 300, "train_seconds": 1.0}}
    for other, value in (baselines or {}).items():
        methods[other] = {"mse": value, "ci95": 0.3, "tasks": 300, "train_seconds": 1.0}
    metrics = {"task": task, "model": model, "methods": methods, "mean_squared_target": target}
    folder.joinpath("metrics.json").write_text(json.dumps(metrics))
    return folder


def test_cells_are_averaged_over_seeds_with_a_student_t_interval(tmp_path):
    for seed, mse in enumerate([0.2, 0.3, 0.4]):
        _run(tmp_path / "sweep", f"{seed}_msr", "conv1d", "msr_fc", seed, 1000, mse, latent=3)
    for seed, mse in enumerate([0.25, 0.35]):
        _run(tmp_path / "sweep", f"{seed}_conv", "conv1d", "conv", seed, 1000, mse)
    _run(tmp_path / "other", "0_msr6", "conv1d", "msr_fc", 0, 1000, 0.5, latent=6)
    _run(tmp_path / "other", "0_msr5k", "conv1d", "msr_fc", 0, 5000, 0.1, latent=3)
    (tmp_path / "other" / "not_a_run").mkdir()

    summaries = {
        s.cell: s for s in summarize([r for f in find_runs([tmp_path]) for r in load_run(f)])
    }
    assert set(summaries) == {
        ("conv1d", "conv", None, 1000),
        ("conv1d", "msr_fc", 3, 1000),
        ("conv1d", "msr_fc", 6, 1000),
        ("conv1d", "msr_fc", 3, 5000),
    }
    msr = summaries[("conv1d", "msr_fc", 3, 1000)]
    assert msr.seeds == (0, 1, 2)
    assert msr.mean == pytest.approx(0.3, abs=1e-12)
    assert msr.ci95 == pytest.approx(student_t.ppf(0.975, 2) * 0.1 / math.sqrt(3), rel=1e-12)
    conv = summaries[("conv1d", "conv", None, 1000)]
    assert conv.mean == pytest.approx(0.3, abs=1e-12)
    assert conv.ci95 == pytest.approx(12.706204736 * 0.05 * math.sqrt(2) / math.sqrt(2), rel=1e-8)
    single = summaries[("conv1d", "msr_fc", 6, 1000)]
    assert single.mean == 0.5 and math.isnan(single.ci95) and single.task_ci95 == 0.1


def test_baselines_trained_in_the_same_run_get_their_own_rows(tmp_path):
    _run(tmp_path, "a", "rank2", "msr_fc", 0, 1000, 0.2, latent=6, baselines={"dense": 3.0})
    _run(tmp_path, "b", "rank2", "msr_fc", 1, 1000, 0.4, latent=6, baselines={"dense": 2.0})
    summaries = {
        s.cell: s for s in summarize([r for f in find_runs([tmp_path]) for r in load_run(f)])
    }
    assert summaries[("rank2", "dense", None, 1000)].mean == pytest.approx(2.5)
    assert summaries[("rank2", "msr_fc", 6, 1000)].mean == pytest.approx(0.3)


def test_table_and_plot_are_written(tmp_path, capsys):
    for seed, mse in enumerate([0.1, 0.3]):
        _run(tmp_path / "runs", f"{seed}", "conv1d", "msr_fc", seed, 1000, mse, latent=None)
    _run(tmp_path / "runs", "dense", "conv1d", "dense", 0, 1000, 2.9)
    table = aggregate([tmp_path / "runs"], tmp_path / "out.md", tmp_path / "out.png")
    assert "| conv1d | msr_fc | 1000 | 2 | 0.200 | ± 1.271 | ± 0.100 | 3.000 |" in table
    assert "| conv1d | dense | 1000 | 1 | 2.900 | ± n/a | ± 0.100 | 3.000 |" in table
    assert (tmp_path / "out.md").read_text() == table + "\n"
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    main([str(tmp_path / "runs")])
    assert "| conv1d | dense |" in capsys.readouterr().out


def test_a_repeated_seed_counts_once(tmp_path):
    import os

    old = _run(tmp_path, "old", "conv1d", "conv", 0, 1000, 9.0)
    _run(tmp_path, "new", "conv1d", "conv", 0, 1000, 1.0)
    os.utime(old / "metrics.json", (0, 0))
    (summary,) = summarize([r for f in find_runs([tmp_path]) for r in load_run(f)])
    assert summary.seeds == (0,) and summary.mean == 1.0


def test_missing_or_empty_folders_are_refused(tmp_path):
    with pytest.raises(MetasymError, match="does not exist"):
        aggregate([tmp_path / "missing"])
    with pytest.raises(MetasymError, match="no run folders"):
        aggregate([tmp_path])
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.yaml").write_text("task:\n  name: conv1d\n")
    (folder / "metrics.json").write_text("{}")
    with pytest.raises(MetasymError, match="has no 'model.name'"):
        aggregate([tmp_path])
