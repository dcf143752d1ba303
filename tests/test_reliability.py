"""Runs survive kills and interrupts, refuse to overwrite, and repeat themselves exactly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metasym.errors import MetasymError
from metasym.meta import load_checkpoint
from metasym.train import run

ROOT = Path(__file__).resolve().parent.parent
TRAIN = [sys.executable, "-m", "metasym.train", "task=conv1d", "task.n_in=20", "threads=1"]


def _settings(**meta):
    return {
        "task": {"name": "conv1d", "n_in": 12},
        "model": {"name": "msr_fc"},
        "meta": {
            "outer_steps": 40,
            "eval_tasks": 20,
            "eval_every": 20,
            "checkpoint_every": 10,
            **meta,
        },
        "logger": {"name": "none"},
        "baselines": ["conv"],
    }


def _scores(metrics: dict) -> dict:
    return {m: (r["mse"], r["ci95"]) for m, r in metrics["methods"].items()}


def _wait_for_step(path: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "training ended before it could be interrupted"
        if path.is_file():
            reached = load_checkpoint(path)["step"]
            if reached >= step:
                return reached
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at step >= {step} within {timeout} s")


def test_same_seed_and_config_give_identical_metrics(tmp_path):
    a = run(_settings(), tmp_path / "a", progress=False)
    b = run(_settings(), tmp_path / "b", progress=False)
    assert _scores(a) == _scores(b)
    assert a["band_energy"] == b["band_energy"] and a["inner_lrs"] == b["inner_lrs"]
    c = run(_settings(seed=1), tmp_path / "c", progress=False)
    assert _scores(c) != _scores(a)


def test_a_new_run_never_writes_into_an_existing_run(tmp_path):
    run(_settings(), tmp_path, progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(MetasymError, match="already holds a run; resume it"):
        run(_settings(), tmp_path, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_resume_extends_a_finished_run_like_an_uninterrupted_one(tmp_path):
    run(_settings(outer_steps=20), tmp_path / "short", progress=False)
    resumed = run(_settings(), tmp_path / "short", progress=False, resume=True)
    straight = run(_settings(), tmp_path / "long", progress=False)
    assert _scores(resumed) == _scores(straight)
    assert load_checkpoint(tmp_path / "short" / "checkpoint_conv.pt")["step"] == 40


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"meta": {"outer_lr": 0.01}}, "meta.outer_lr \\(run: 0.001, now: 0.01\\)"),
        ({"task": {"name": "conv1d", "n_in": 14}}, "task \\(run: "),
        ({"model": {"name": "msr_fc", "latent": 2}}, "model \\(run: "),
    ],
)
def test_resume_refuses_a_config_that_changes_the_model(tmp_path, change, fragment):
    run(_settings(outer_steps=10), tmp_path, progress=False)
    settings = _settings()
    for key, value in change.items():
        settings[key] = {**settings[key], **value} if key == "meta" else value
    with pytest.raises(MetasymError, match=fragment):
        run(settings, tmp_path, progress=False, resume=True)


def test_resume_refuses_a_folder_without_a_run(tmp_path):
    with pytest.raises(MetasymError, match="holds no checkpoint.pt, so it is not a run folder"):
        run(_settings(), tmp_path, progress=False, resume=True)


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_metrics(tmp_path):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    common = [
        "meta.outer_steps=1500",
        "meta.checkpoint_every=50",
        "meta.eval_every=0",
        "meta.eval_tasks=30",
    ]
    proc = subprocess.Popen(
        [*TRAIN, *common, f"hydra.run.dir={killed}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        step = _wait_for_step(killed / "checkpoint.pt", 100, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert 100 <= step < 1500 and not (killed / "metrics.json").exists()

    done = subprocess.run(
        [*TRAIN, *common, f"resume={killed}"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    done = subprocess.run(
        [*TRAIN, *common, f"hydra.run.dir={straight}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    a = json.loads((killed / "metrics.json").read_text())
    b = json.loads((straight / "metrics.json").read_text())
    assert _scores(a) == _scores(b)


@pytest.mark.slow
def test_ctrl_c_checkpoints_a_state_that_resumes_exactly(tmp_path):
    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    common = [
        "meta.outer_steps=4000",
        "meta.checkpoint_every=100",
        "meta.eval_every=0",
        "meta.eval_tasks=30",
    ]
    proc = subprocess.Popen(
        [*TRAIN, *common, f"hydra.run.dir={stopped}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_step(stopped / "checkpoint.pt", 100, proc)
    time.sleep(0.37)  # land between checkpoints
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    step = load_checkpoint(stopped / "checkpoint.pt")["step"]
    assert 100 <= step < 4000

    for args in ([f"resume={stopped}"], [f"hydra.run.dir={straight}"]):
        done = subprocess.run(
            [*TRAIN, *common, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-2000:]
    a = json.loads((stopped / "metrics.json").read_text())
    b = json.loads((straight / "metrics.json").read_text())
    assert _scores(a) == _scores(b)


def test_refused_runs_leave_no_folder_behind(tmp_path):
    target = tmp_path / "typo"
    done = subprocess.run(
        [*TRAIN, f"resume={target}"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "holds no checkpoint.pt" in done.stderr
    assert not target.exists()


def test_resume_refuses_fewer_steps_than_taken(tmp_path):
    run(_settings(outer_steps=20), tmp_path, progress=False)
    with pytest.raises(MetasymError, match="meta.outer_steps=10: the run is already at step 20"):
        run(_settings(outer_steps=10), tmp_path, progress=False, resume=True)


@pytest.mark.slow
def test_wandb_logger_writes_an_offline_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    settings = _settings(outer_steps=10)
    settings["logger"] = {"name": "wandb", "mode": "offline", "project": "metasym-test"}
    run(settings, tmp_path, progress=False)
    files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1 and files[0].stat().st_size > 0


def test_wandb_is_not_imported_unless_asked(tmp_path):
    code = (
        "import sys; from metasym.train import run; "
        f"run({_settings(outer_steps=2)!r}, {str(tmp_path)!r}, progress=False); "
        "print('wandb' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("False")


def test_unknown_wandb_mode_is_refused(tmp_path):
    settings = _settings(outer_steps=2)
    settings["logger"] = {"name": "wandb", "mode": "cloud"}
    with pytest.raises(
        MetasymError, match="unknown wandb mode 'cloud'; valid modes: offline, online, disabled"
    ):
        run(settings, tmp_path, progress=False)
