"""The downstream benchmark: a discovered layer learns a new task from fewer examples than dense."""

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import tasks
from metasym import groups
from metasym.discovered import load_layer, read_run
from metasym.errors import MetasymError
from metasym.layers import SharedLinear

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import downstream  # noqa: E402

SIZES = (1, 2, 4, 8, 16, 32)


@pytest.fixture(scope="module")
def circular_run(tmp_path_factory):
    torch.set_num_threads(1)
    # 2000 cosine steps (the conv1d_circular default): after 1000 the learned U already names C_16,
    # but its span still misses 10-20% of a typical new filter's energy
    return downstream.meta_train(tmp_path_factory.mktemp("circular") / "run", outer_steps=2000)


def test_least_squares_recovers_a_circular_filter_from_one_example(gen):
    fam = tasks.make_family("conv1d", n_in=16, circular=True)
    U = groups.sharing_matrix(fam.true_group(), 16, 16)  # (256, 16): every circular offset
    layer = SharedLinear(16, 16, int(U.shape[1]), sharing=U)
    data = downstream.draw_task(fam, seeds=1, max_n=1, n_test=50, task_seed=3)
    downstream.fit_least_squares(layer, data.train_x[0], data.train_y[0])
    # one example of a circular convolution gives 16 equations for its 16 offsets
    torch.testing.assert_close(layer(data.test_x), data.test_y, atol=1e-4, rtol=1e-4)

    dense = nn.Linear(16, 16, bias=False)
    downstream.fit_least_squares(dense, data.train_x[0], data.train_y[0])
    # the minimum-norm dense fit from one example only sees the input's direction
    assert (dense(data.test_x) - data.test_y).pow(2).mean() > 0.5 * data.mean_squared_target


def test_least_squares_refuses_models_it_cannot_solve():
    with pytest.raises(MetasymError, match="got Sequential"):
        downstream.fit_least_squares(nn.Sequential(), torch.zeros(1, 2), torch.zeros(1, 2))
    with pytest.raises(MetasymError, match="needs U frozen"):
        downstream.fit_least_squares(SharedLinear(2, 2, 1), torch.zeros(1, 2), torch.zeros(1, 2))


def test_summary_and_threshold():
    mean, half = downstream.summarize([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 / math.sqrt(3), rel=1e-3)
    assert math.isnan(downstream.summarize([1.0])[1])
    curve = {1: [5.0, 5.0], 2: [0.5, 1.5], 4: [0.1, 0.1]}
    assert downstream.samples_to_reach(curve, 1.0) == 2
    assert downstream.samples_to_reach(curve, 0.01) is None


@pytest.mark.slow
def test_discovered_layers_reach_the_target_with_fewer_examples_than_dense(circular_run):
    family = read_run(circular_run).family
    learned = load_layer(circular_run)
    snapped = load_layer(circular_run, snap=True)
    factories = {
        "discovered": lambda: load_layer(circular_run),
        "snapped": lambda: load_layer(circular_run, snap=True),
        "dense": lambda: nn.Linear(16, 16, bias=False),
    }
    data = downstream.draw_task(family, seeds=3, max_n=max(SIZES), n_test=300, task_seed=0)
    curves = downstream.sample_efficiency(factories, data, SIZES)
    target = 0.05 * data.mean_squared_target
    reached = {name: downstream.samples_to_reach(c, target) for name, c in curves.items()}

    assert (learned.latent, snapped.latent) == (3, 3)  # snapping keeps the 3-tap band
    # k = 3 (or 16) filter parameters against o * i = 256 weights; dense needs 16 examples of 16
    # outputs to pin its 256 weights down
    assert reached["discovered"] == 1
    assert reached["snapped"] == 1
    assert reached["dense"] == 16
    mean = {name: {n: sum(v) / len(v) for n, v in c.items()} for name, c in curves.items()}
    assert mean["dense"][8] > 0.3 * data.mean_squared_target
    assert mean["discovered"][1] < 0.01 * data.mean_squared_target
    assert mean["snapped"][1] < 1e-6 * data.mean_squared_target

    table = downstream.format_tables(curves, target, {"discovered": 3, "snapped": 16, "dense": 256})
    assert "| dense | 256 | 16 |" in table and "| snapped | 16 | 1 |" in table


@pytest.mark.slow
def test_script_prints_the_tables_and_the_plug_in_model(circular_run, capsys):
    downstream.main(
        ["--run-dir", str(circular_run), "--seeds", "2", "--sizes", "1", "16", "--n-test", "100"]
    )
    out = capsys.readouterr().out
    assert "| 1 |" in out and "| 16 |" in out
    assert "| dense | 256 | 16 |" in out
    assert "trainable: 0.v (3,), 2.weight (1, 16), 2.bias (1,)" in out
