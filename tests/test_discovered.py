"""From a learned U to a named group, and the discovered layer in a new model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tasks
from metasym import groups
from metasym.analysis.partition import tie_partition
from metasym.analysis.report import analyze_sharing, snap_to_partition
from metasym.discovered import analyze_run, load_layer, read_run
from metasym.errors import MetasymError
from metasym.train import run
from tasks.permutation import parse_group

ROOT = Path(__file__).resolve().parent.parent


def _noisy_sharing(
    partition: torch.Tensor, k: int, noise: float, gen: torch.Generator
) -> torch.Tensor:
    """A U whose rows are tied exactly along ``partition``, plus noise."""
    flat = partition.reshape(-1)
    classes = int(flat.max()) + 1
    basis = torch.randn(classes, k, generator=gen)
    U = torch.zeros(flat.numel(), k)
    U[flat >= 0] = basis[flat[flat >= 0]]
    return U + noise * torch.randn(U.shape, generator=gen)


@pytest.mark.parametrize(
    ("spec", "order", "name"),
    [("S5", 120, "S_5"), ("D6", 12, "D_6"), ("C7", 7, "C_7"), ("A4", 12, "A_4")],
)
def test_permutation_family_maps_commute_with_the_group(spec, order, name, gen):
    fam = tasks.make_family("permutation", group=spec)
    n = fam.in_features
    w = fam._weights(4, gen)
    for g in parse_group(spec).generators:
        P = torch.eye(n)[:, torch.tensor(g.array_form)]
        torch.testing.assert_close(w @ P, P @ w)
    assert groups.order(fam.true_group()) == order
    assert groups.group_name(parse_group(spec)) == name


def test_parse_group_builds_products_and_refuses_bad_specs():
    assert groups.order(parse_group("C3xC4")) == 12 and parse_group("C3xC4").degree == 7
    with pytest.raises(MetasymError, match="unknown group 'Q8'"):
        parse_group("Q8")
    with pytest.raises(MetasymError, match="needs n >= 3"):
        parse_group("D2")


@pytest.mark.parametrize(
    ("family", "expected_order"),
    [
        (lambda: tasks.make_family("conv1d", n_in=16, circular=True), 16),
        (lambda: tasks.make_family("permutation", group="S5"), 120),
        (lambda: tasks.make_family("permutation", group="D6"), 12),
        (lambda: tasks.make_family("digits_p4"), 256),
    ],
)
def test_noisy_learned_sharing_recovers_the_true_group(family, expected_order, gen):
    fam = family()
    truth = fam.true_partition()
    o, i = truth.shape
    U = _noisy_sharing(truth, fam.filter_size, noise=0.01, gen=gen)
    result = analyze_sharing(U, o, i, truth, fam.true_group())
    assert result["group"]["order"] == expected_order
    assert result["truth"]["relation"] == "equal"
    assert result["truth"]["partition_distance"] == 0
    assert result["equivariance"]["snapped"] < 1e-6
    assert 1e-4 < result["equivariance"]["learned"] < 0.2  # noise breaks exactness a little


def test_unconnected_rows_with_a_noise_floor_are_found(gen):
    # off-band rows at 7% of the row scale: a fixed 5% cut would call them connected
    fam = tasks.make_family("conv1d", n_in=16, circular=True)
    truth = fam.true_partition()
    U = _noisy_sharing(truth, 3, noise=0.0, gen=gen)
    off = truth.reshape(-1) < 0
    U[off] = 0.04 * torch.randn(int(off.sum()), 3, generator=gen)
    labels = tie_partition(U, n_out=16, n_in=16)
    assert torch.equal(labels < 0, truth < 0)


def test_low_rank_locally_connected_sharing_has_no_exact_symmetry(gen):
    fam = tasks.make_family("locally_connected1d", rank=5)
    truth = fam.true_partition()
    U = _noisy_sharing(truth, 15, noise=0.0, gen=gen)
    result = analyze_sharing(U, 68, 70, truth, fam.true_group())
    assert result["group"]["summary"].startswith("no exact symmetry")
    assert (
        result["truth"]["group_name"] == "no exact symmetry"
        and result["truth"]["relation"] == "equal"
    )


def test_snapping_averages_rows_within_classes():
    U = torch.tensor([[1.0, 0.0], [1.2, 0.0], [0.0, 2.0], [0.01, 0.0]])
    labels = torch.tensor([0, 0, 1, -1])
    snapped = snap_to_partition(U, labels)
    torch.testing.assert_close(
        snapped, torch.tensor([[1.1, 0.0], [1.1, 0.0], [0.0, 2.0], [0.0, 0.0]]).double()
    )


@pytest.fixture(scope="module")
def d6_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("d6")
    settings = {
        "task": {"name": "permutation", "group": "D6"},
        "model": {"name": "msr_fc"},
        "meta": {"outer_steps": 2000, "lr_schedule": "cosine", "eval_tasks": 20, "eval_every": 0},
        "logger": {"name": "none"},
        "baselines": [],
    }
    torch.set_num_threads(1)
    metrics = run(settings, run_dir, progress=False)
    return run_dir, metrics


@pytest.mark.slow
def test_meta_training_discovers_d6_and_writes_the_analysis(d6_run):
    run_dir, metrics = d6_run
    assert metrics["symmetry"]["order"] == 12 and metrics["symmetry"]["relation"] == "equal"
    sym = json.loads((run_dir / "symmetry.json").read_text())
    assert sym["truth"]["partition_distance"] == 0
    assert sym["equivariance"]["learned"] < 5e-2 and sym["equivariance"]["snapped"] < 1e-3
    assert sym["universality"]["two_closed"] is True
    for name in ("partition.png", "group.png", "sharing.png"):
        assert (run_dir / name).stat().st_size > 10_000


@pytest.mark.slow
def test_loaded_layers_plug_into_a_model_and_snap_exactly(d6_run):
    run_dir, _ = d6_run
    layer = load_layer(run_dir)
    snapped = load_layer(run_dir, snap=True)
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["v"]
    assert snapped.U.shape == (36, 4)  # D6 has 4 orbits on pairs of hexagon vertices
    model = torch.nn.Sequential(snapped, torch.nn.Tanh(), torch.nn.Linear(6, 1))
    x = torch.randn(5, 6)
    rotate = torch.tensor([1, 2, 3, 4, 5, 0])
    torch.testing.assert_close(model[0](x)[:, rotate], model[0](x[:, rotate]), atol=1e-5, rtol=1e-5)
    # the learned layer is close to equivariant, the snapped one exactly
    gap = (layer(x)[:, rotate] - layer(x[:, rotate])).norm() / layer(x).norm()
    assert gap < 0.1
    learned_w = read_run(run_dir).layer.weight().detach()
    assert (snapped.weight() - learned_w).norm() / learned_w.norm() < 0.1


def test_analyze_refuses_folders_that_are_not_msr_runs(tmp_path):
    with pytest.raises(MetasymError, match="does not exist"):
        analyze_run(tmp_path / "missing")
    with pytest.raises(MetasymError, match="holds no checkpoint.pt"):
        analyze_run(tmp_path)
    settings = {
        "task": {"name": "conv1d", "n_in": 10},
        "model": {"name": "dense"},
        "meta": {"outer_steps": 2, "eval_tasks": 5},
        "logger": {"name": "none"},
    }
    run(settings, tmp_path / "dense", progress=False)
    with pytest.raises(MetasymError, match="trained a 'Dense' model; only msr_fc runs"):
        load_layer(tmp_path / "dense")


def test_analyze_command_reports_errors_without_a_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "metasym.analyze", f"run_dir={tmp_path / 'nothing'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "metasym-analyze: error: run folder" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "nothing").exists()


@pytest.mark.slow
def test_theory_commands_read_a_discovered_group(d6_run):
    from metasym.theory.invariant_krr import parse_group as parse_theory_group

    run_dir, _ = d6_run
    perms = parse_theory_group(str(run_dir / "symmetry.json"))
    assert perms.shape == (12, 6)  # D_6 acting on the 6 inputs
    assert sorted(perms[:, 0].tolist()) == sorted(list(range(6)) * 2)


@pytest.mark.parametrize(
    ("over", "fragment"),
    [
        ({"run_dir": "???"}, "run_dir is required"),
        ({"samples": "abc"}, "samples must be a positive integer; got 'abc'"),
        ({"tie_tol": "abc"}, "tie_tol must be a number >= 0 or null"),
        ({"zero_tol": -1}, "zero_tol must be a number >= 0 or null"),
        ({"universality": "maybe"}, "universality must be true or false"),
    ],
)
def test_analyze_arguments_are_checked(over, fragment):
    from omegaconf import OmegaConf

    from metasym.analyze import _arguments

    base = {"run_dir": "x", "zero_tol": None, "tie_tol": None, "samples": 32, "universality": True}
    with pytest.raises(MetasymError, match=fragment):
        _arguments(OmegaConf.create({**base, **over}))


def test_aggregate_command_reports_errors_without_a_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "metasym.aggregate", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "metasym-aggregate: error: no run folders" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_package_level_load_layer(d6_run):
    import metasym

    run_dir, _ = d6_run
    layer = metasym.load_layer(run_dir, snap=True)
    assert isinstance(layer, torch.nn.Module) and layer.latent == 4


@pytest.mark.slow
def test_meta_training_on_real_digits_discovers_p4(tmp_path):
    """The main job's default task and settings (conf/task/digits_p4.yaml), evaluated briefly."""
    settings = {
        "task": {"name": "digits_p4"},
        "model": {"name": "msr_fc"},
        "meta": {
            "n_support": 4,
            "outer_steps": 3000,
            "tasks_per_step": 64,
            "outer_lr": 0.01,
            "lr_schedule": "cosine",
            "eval_tasks": 50,
            "eval_every": 0,
        },
        "logger": {"name": "none"},
    }
    metrics = run(settings, tmp_path, progress=False)
    assert metrics["symmetry"]["order"] == 256 and metrics["symmetry"]["relation"] == "equal"
    assert metrics["symmetry"]["partition_distance"] == 0
    sym = json.loads((tmp_path / "symmetry.json").read_text())
    assert sym["equivariance"]["learned"] < 5e-2 and sym["equivariance"]["snapped"] < 1e-6
    assert metrics["methods"]["msr_fc"]["mse"] < 0.05
