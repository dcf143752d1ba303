import math

import pytest
import torch

import tasks
from metasym.errors import MetasymError
from metasym.layers import split_parameters
from metasym.meta import MetaConfig, MetaLearner, load_checkpoint, task_losses
from metasym.models import build_model
from metasym.train import _partition_energy


def _meta_grad(model, batch, lrs, backend, first_order, steps=2):
    fast, meta = split_parameters(model)
    loss = task_losses(model, fast, meta, lrs, batch, steps, first_order, backend).mean()
    grads = torch.autograd.grad(loss, [*model.parameters(), lrs])
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("model_name", ["msr_fc", "conv", "dense"])
@pytest.mark.parametrize("first_order", [False, True])
def test_func_and_higher_backends_give_the_same_meta_gradient(model_name, first_order, gen):
    fam = tasks.make_family("conv1d", n_in=20)
    torch.manual_seed(0)
    model = build_model(model_name, fam).double()
    batch = fam.sample(6, 2, 5, generator=gen)
    batch = type(batch)(
        *(t.double() for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y))
    )
    lrs = torch.full(
        (len(split_parameters(model)[0]),), 0.3, dtype=torch.float64, requires_grad=True
    )
    a = _meta_grad(model, batch, lrs, "func", first_order)
    b = _meta_grad(model, batch, lrs, "higher", first_order)
    assert (a - b).norm() / a.norm() < 1e-5


def test_second_order_differs_from_first_order_and_matches_finite_differences(gen):
    fam = tasks.make_family("conv1d", n_in=12)
    torch.manual_seed(0)
    model = build_model("msr_fc", fam).double()
    with torch.no_grad():
        model.U.mul_(30)
    batch = fam.sample(4, 1, 5, generator=gen)
    batch = type(batch)(
        *(t.double() for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y))
    )
    lrs = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    second = _meta_grad(model, batch, lrs, "func", False, steps=1)
    first = _meta_grad(model, batch, lrs, "func", True, steps=1)
    assert (second - first).norm() / second.norm() > 1e-3

    # central difference of the meta-loss along a random direction of U
    direction = torch.randn_like(model.U, generator=gen)
    fast, meta = split_parameters(model)

    def meta_loss(shift: float) -> float:
        shifted = {"U": meta["U"] + shift * direction}
        return task_losses(model, fast, shifted, lrs, batch, 1).mean().item()

    eps = 1e-5
    numeric = (meta_loss(eps) - meta_loss(-eps)) / (2 * eps)
    analytic = (second[: model.U.numel()] * direction.flatten()).sum().item()
    assert abs(numeric - analytic) < 1e-6 * max(1.0, abs(numeric))


def test_unknown_backend_and_bad_config_are_refused():
    with pytest.raises(MetasymError, match="unknown backend 'jax'; valid backends: func, higher"):
        MetaConfig(backend="jax")
    with pytest.raises(MetasymError, match="n_support must be a positive integer; got 0"):
        MetaConfig(n_support=0)
    with pytest.raises(MetasymError, match="outer_lr must be a positive finite number"):
        MetaConfig(outer_lr=float("nan"))


def test_nan_loss_stops_training_with_the_step(tmp_path):
    fam = tasks.make_family("conv1d", n_in=10)
    torch.manual_seed(0)
    learner = MetaLearner(
        build_model("msr_fc", fam), fam, MetaConfig(outer_steps=6, checkpoint_every=2)
    )
    learner.fit(steps=2, checkpoint=tmp_path / "c.pt")
    good = (tmp_path / "c.pt").read_bytes()
    with torch.no_grad():
        learner.model.U.fill_(float("inf"))
    with pytest.raises(MetasymError, match="meta-loss became nan at outer step 3"):
        learner.fit(checkpoint=tmp_path / "c.pt")
    assert (tmp_path / "c.pt").read_bytes() == good  # the last good checkpoint is kept
    assert load_checkpoint(tmp_path / "c.pt")["step"] == 2


def test_tasks_of_the_wrong_size_are_refused(gen):
    fam = tasks.make_family("conv1d", n_in=10)
    learner = MetaLearner(build_model("msr_fc", fam), fam, MetaConfig(outer_steps=1))
    other = tasks.make_family("conv1d", n_in=12).sample(2, generator=gen)
    with pytest.raises(
        MetasymError,
        match="tasks have 12 inputs and 10 outputs, but the model was built for 10 -> 8",
    ):
        learner.meta_step(other)


def test_same_seed_gives_identical_results_and_resume_matches(tmp_path):
    fam = tasks.make_family("conv1d", n_in=16)
    cfg = MetaConfig(outer_steps=20, eval_tasks=20, checkpoint_every=10)

    def fresh() -> MetaLearner:
        torch.manual_seed(cfg.seed)
        return MetaLearner(build_model("msr_fc", fam), fam, cfg)

    a, b = fresh(), fresh()
    a.fit()
    b.fit()
    assert a.history == b.history and a.evaluate().mean == b.evaluate().mean

    c = fresh()
    c.fit(steps=10, checkpoint=tmp_path / "ckpt.pt")
    d = fresh()
    torch.manual_seed(999)  # a resumed run must not depend on the global seed
    d.load_state_dict(load_checkpoint(tmp_path / "ckpt.pt"))
    d.fit()
    assert d.history == a.history and d.evaluate().mean == a.evaluate().mean


def test_broken_checkpoints_are_refused(tmp_path):
    fam = tasks.make_family("conv1d", n_in=10)
    learner = MetaLearner(build_model("msr_fc", fam), fam, MetaConfig(outer_steps=1))
    path = learner.save(tmp_path / "ok.pt")
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(MetasymError, match="cannot be read"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(MetasymError, match="is not a metasym checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(MetasymError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    dense = MetaLearner(build_model("dense", fam), fam, MetaConfig(outer_steps=1))
    with pytest.raises(MetasymError, match="checkpoint holds a 'SharedLinear' model"):
        dense.load_state_dict(load_checkpoint(path))


def test_adapt_returns_a_model_fitted_to_the_support_set(gen):
    fam = tasks.make_family("conv1d", n_in=10)
    learner = MetaLearner(build_model("conv", fam), fam, MetaConfig(outer_steps=1, inner_lr=0.05))
    batch = fam.sample(1, 10, 1, generator=gen)
    x, y = batch.support_x[0], batch.support_y[0]
    before = torch.nn.functional.mse_loss(learner.model(x), y)
    adapted = learner.adapt(x, y, steps=20)
    after = torch.nn.functional.mse_loss(adapted(x), y)
    assert after < 0.1 * before
    assert not torch.equal(adapted.weight, learner.model.weight)


@pytest.mark.slow
def test_conv1d_msr_matches_conv_and_learns_the_band():
    """1000 outer steps on valid 3-tap convolutions (arXiv 2007.02933, Table 1 setting)."""
    fam = tasks.make_family("conv1d")
    cfg = MetaConfig(outer_steps=1000)
    results = {}
    for name in ("msr_fc", "conv", "dense", "lc"):
        torch.manual_seed(cfg.seed)
        learner = MetaLearner(build_model(name, fam), fam, cfg)
        learner.fit()
        results[name] = learner.evaluate().mean
        if name == "msr_fc":
            energy = _partition_energy(learner.model, fam)
            target = learner.test_batch().query_y.pow(2).mean().item()
    assert results["msr_fc"] <= 0.22
    assert abs(results["msr_fc"] - results["conv"]) <= 0.03 or results["msr_fc"] < results["conv"]
    assert results["dense"] >= 0.9 * target and results["lc"] >= 0.9 * target
    assert energy >= 0.99
    assert math.isclose(target, 2.98, rel_tol=0.1)


@pytest.mark.slow
def test_locally_connected_rank2_msr_beats_conv():
    """Rank-2 locally connected tasks have no exact symmetry; MSR learns their low-rank sharing."""
    fam = tasks.make_family("locally_connected1d", rank=2)
    cfg = MetaConfig(outer_steps=3000, eval_tasks=200)
    results = {}
    for name in ("msr_fc", "conv"):
        torch.manual_seed(cfg.seed)
        learner = MetaLearner(build_model(name, fam), fam, cfg)
        learner.fit(steps=3000 if name == "msr_fc" else 1000)  # conv has plateaued by 1000 steps
        results[name] = learner.evaluate()
    assert (
        results["msr_fc"].mean + results["msr_fc"].ci95
        < results["conv"].mean - results["conv"].ci95
    )
    assert results["msr_fc"].mean < 0.3


@pytest.mark.slow
def test_digits_p4_msr_is_five_times_better_than_dense():
    fam = tasks.make_family("digits_p4")
    # the task's own defaults (conf/task/digits_p4.yaml), on a shorter budget
    cfg = MetaConfig(outer_steps=600, outer_lr=0.01, lr_schedule="cosine", eval_tasks=100)
    results = {}
    for name in ("msr_fc", "dense"):
        torch.manual_seed(cfg.seed)
        learner = MetaLearner(build_model(name, fam), fam, cfg)
        learner.fit()
        results[name] = learner.evaluate().mean
    assert 5 * results["msr_fc"] < results["dense"]


def test_weight_decay_acts_on_the_sharing_only():
    fam = tasks.make_family("conv1d", n_in=10)
    learner = MetaLearner(build_model("msr_fc", fam), fam, MetaConfig(weight_decay=0.5))
    decays = {
        id(p): group["weight_decay"]
        for group in learner.optimizer.param_groups
        for p in group["params"]
    }
    assert decays[id(learner.model.U)] == 0.5
    assert decays[id(learner.model.v)] == 0.0 and decays[id(learner.inner_lrs)] == 0.0
    with pytest.raises(MetasymError, match="weight_decay must be a finite number >= 0; got -1"):
        MetaConfig(weight_decay=-1)
