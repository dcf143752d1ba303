"""Checks of Noether charges under SGD (arXiv 2105.02716) and of the MSR factorisation symmetry."""

import math

import pytest
import torch
from torch import nn

from metasym.errors import MetasymError
from metasym.theory.noether import (
    ChargeTracker,
    RescaleSymmetry,
    ScaleSymmetry,
    TranslationSymmetry,
    effective_learning_rate,
    equilibrium_norm4,
    msr_charge,
    msr_meta_loss,
    msr_symmetry_transform,
    rescale_charge,
    run_msr_charge_experiment,
    sample_conv1d_tasks,
    scale_charge,
    scale_invariant_logistic_sgd,
    translation_charge,
)

F64 = torch.float64


class WeightNormLogistic(nn.Module):
    def __init__(self, dim: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        gen = torch.Generator().manual_seed(1)
        self.w = nn.Parameter(torch.randn(dim, generator=gen, dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x @ (self.w / self.w.norm())


class TwoLayer(nn.Module):
    def __init__(self, i: int, h: int, o: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(i, h, dtype=F64)
        self.fc2 = nn.Linear(h, o, dtype=F64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _logistic_data(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=F64)
    p = torch.sigmoid(x @ torch.randn(d, generator=gen, dtype=F64))
    return x, (torch.rand(n, generator=gen, dtype=F64) < p).to(F64)


def test_charges_of_simple_tensors() -> None:
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64)
    assert scale_charge(w).tolist() == [30.0]
    assert scale_charge(w, per_row=True).tolist() == [5.0, 25.0]
    b = torch.tensor([1.0, -1.0], dtype=F64)
    w_out = torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.0, 1.0]], dtype=F64)  # (o=3, h=2)
    assert rescale_charge([w, b], [w_out]).tolist() == [6.0 - 5.0, 26.0 - 2.0]
    assert translation_charge([w_out, b]).tolist() == [3.0, 2.0, 0.0]
    assert float(effective_learning_rate(w, 0.3)) == pytest.approx(0.01)


def test_scale_invariant_norm_recursion_with_weight_decay() -> None:
    x, y = _logistic_data(200, 6)
    model = WeightNormLogistic(6, scale=3.0)
    lr, wd = 0.4, 0.05
    tracker = ChargeTracker(model, [ScaleSymmetry("w")], lr=lr, weight_decay=wd)
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        idx = torch.randint(0, 200, (10,), generator=gen)
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(x[idx]), y[idx]).backward()
        assert abs(float(model.w.grad @ model.w.detach())) < 1e-14 * float(model.w.grad.norm())
        tracker.record()
        opt.step()
    tracker.record(predict=False)
    err = tracker.prediction_error()["scale:w"]
    assert err.shape == (100, 1)
    assert err.max() < 1e-12
    # Without the eta^2 |g|^2 term the recursion would be off by far more.
    hist = tracker.as_tensors()["scale:w"][:, 0]
    assert ((hist[1:] - (1 - lr * wd) ** 2 * hist[:-1]) / hist[1:]).abs().max() > 1e-6


@pytest.mark.slow
def test_equilibrium_norm_matches_prediction() -> None:
    x, y = _logistic_data(1000, 10)
    lr, wd = 0.5, 1e-2
    run = scale_invariant_logistic_sgd(x, y, scale=4.0, lr=lr, weight_decay=wd, steps=20_000)
    tail = 5_000  # relaxation time ~ 1 / (4 eta lam) = 50 steps
    measured = run["norm_sq"][tail:].pow(2).mean()
    predicted = equilibrium_norm4(lr, wd, run["grad_unit_sq"][tail:].mean())
    assert abs(float(measured) / predicted - 1) < 0.05
    # The gradient at w is the gradient at w_hat divided by |w|.
    ratio = run["grad_unit_sq"] / (run["grad_sq"] * run["norm_sq"][:-1])
    assert torch.allclose(ratio, torch.ones_like(ratio))


def _train_relu(opt_name: str, steps: int = 40, lr: float = 0.1) -> ChargeTracker:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 5, generator=gen, dtype=F64)
    y = torch.randint(0, 3, (128,), generator=gen)
    net = TwoLayer(5, 4, 3)
    syms = [
        RescaleSymmetry(("fc1.weight", "fc1.bias"), ("fc2.weight",)),
        TranslationSymmetry(("fc2.bias",)),
        TranslationSymmetry(("fc2.weight",)),
    ]
    tracker = ChargeTracker(net, syms, lr=lr if opt_name == "sgd" else None)
    opt = (torch.optim.SGD if opt_name == "sgd" else torch.optim.Adam)(net.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, 128, (16,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
        tracker.record()
        opt.step()
    tracker.record(predict=False)
    return tracker


def test_relu_rescale_charge_moves_by_eta_squared_gradient_gap() -> None:
    tracker = _train_relu("sgd")
    name = "rescale:fc1.weight+fc1.bias|fc2.weight"
    assert tracker.prediction_error()[name].max() < 1e-12
    hist = tracker.as_tensors()[name]
    assert hist.shape == (41, 4)
    change = hist.diff(dim=0)
    pred_change = torch.stack(tracker.predicted[name]) - hist[:-1]
    assert change.abs().max() > 1e-6  # the charge does move (kinetic breaking) ...
    rel = (change - pred_change).abs().max() / change.abs().max()
    assert rel < 1e-9  # ... by eta^2 (|g_in|^2 - |g_out|^2), up to cancellation in Q_{t+1} - Q_t


def test_softmax_translation_charges_are_conserved_by_sgd_not_adam() -> None:
    drift = _train_relu("sgd").drift()
    assert drift["translation:fc2.bias"].abs().max() < 1e-12
    assert drift["translation:fc2.weight"].abs().max() < 1e-12
    adam = _train_relu("adam", lr=0.01).drift()
    assert adam["translation:fc2.bias"].abs().max() > 1e-3


def test_tracker_rejects_unknown_parameters_and_missing_gradients() -> None:
    net = TwoLayer(5, 4, 3)
    with pytest.raises(MetasymError, match="fc3.weight"):
        ChargeTracker(net, [ScaleSymmetry("fc3.weight")])
    with pytest.raises(MetasymError, match="number of units"):
        ChargeTracker(net, [RescaleSymmetry(("fc1.weight",), ("fc1.weight",))])
    tracker = ChargeTracker(net, [ScaleSymmetry("fc1.weight")], lr=0.1)
    with pytest.raises(MetasymError, match="no gradient"):
        tracker.record()


def _msr_point(seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(68 * 70, 3, generator=gen, dtype=F64) / 40
    v = torch.randn(3, generator=gen, dtype=F64)
    return u, v, torch.tensor(0.4, dtype=F64)


def test_conv1d_tasks_are_valid_convolutions() -> None:
    batch = sample_conv1d_tasks(2, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (2, 1, 70) and batch.query_y.shape == (2, 19, 68)
    f, x = batch.filters[1], batch.query_x[1, 4]
    expected = torch.stack([f @ x[o : o + 3] for o in range(68)])
    assert torch.allclose(batch.query_y[1, 4], expected)


@pytest.mark.parametrize("alpha_param", ["linear", "log"])
def test_msr_meta_loss_symmetry_uses_alpha_over_c_squared(alpha_param: str) -> None:
    batch = sample_conv1d_tasks(4, torch.Generator().manual_seed(1))
    u, v, a = _msr_point()
    a = a if alpha_param == "linear" else a.log()
    m0 = msr_meta_loss(u, v, a, batch, alpha_param)  # type: ignore[arg-type]
    for c in (0.3, 1.7, 5.0):
        m = msr_meta_loss(*msr_symmetry_transform(u, v, a, c, alpha_param), batch, alpha_param)  # type: ignore[arg-type]
        assert abs(float(m - m0)) < 1e-12 * float(m0)
    wrong_alpha = a * 1.7**2 if alpha_param == "linear" else a + 2 * math.log(1.7)
    m_wrong = msr_meta_loss(1.7 * u, v / 1.7, wrong_alpha, batch, alpha_param)  # type: ignore[arg-type]
    assert abs(float(m_wrong - m0)) > 1e-3 * float(m0)


@pytest.mark.parametrize("alpha_param", ["linear", "log"])
def test_msr_gradient_is_orthogonal_to_the_symmetry_generator(alpha_param: str) -> None:
    batch = sample_conv1d_tasks(4, torch.Generator().manual_seed(2))
    u, v, a = _msr_point(3)
    a = a if alpha_param == "linear" else a.log()
    params = [p.clone().requires_grad_(True) for p in (u, v, a)]
    msr_meta_loss(*params, batch, alpha_param).backward()  # type: ignore[arg-type]
    gu, gv, ga = (p.grad for p in params)
    da = 2 * a * ga if alpha_param == "linear" else 2 * ga
    terms = torch.stack([(u * gu).sum(), (v * gv).sum(), da])
    assert abs(float(terms[0] - terms[1] - terms[2])) < 1e-12 * float(terms.abs().max())
    assert float(terms.abs().max()) > 1e-6


@pytest.mark.parametrize("alpha_param", ["linear", "log"])
def test_msr_charge_changes_by_eta_squared_under_sgd(alpha_param: str) -> None:
    run = run_msr_charge_experiment("sgd", steps=30, lr=0.05, alpha_param=alpha_param)  # type: ignore[arg-type]
    change, pred = run["charge_change"], run["predicted_change"]
    assert ((change - pred).abs() / pred.abs()).max() < 1e-9
    direct = run["charge"].diff()
    assert torch.allclose(direct, change, atol=1e-12)


def test_msr_charge_is_conserved_to_second_order_and_broken_by_adam() -> None:
    drift = {}
    for lr in (4e-3, 2e-3):
        run = run_msr_charge_experiment("sgd", steps=40, lr=lr)
        drift[lr] = float(run["charge_change"].sum().abs())
        # The parameters do move at first order: |U|^2 alone changes by O(eta).
    ratio = drift[4e-3] / drift[2e-3]
    assert 3.5 < ratio < 4.5  # O(eta^2) per step
    adam = run_msr_charge_experiment("adam", steps=40, lr=2e-3)
    assert float(adam["charge_change"].sum().abs()) > 1e3 * drift[2e-3]
    q0 = msr_charge(*_msr_point())
    assert q0.shape == ()


@pytest.mark.slow
def test_main_writes_plot(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from metasym.theory import noether

    noether.main(["--out", str(tmp_path), "--steps", "20", "--lr-sgd", "0.1"])
    assert (tmp_path / "noether.png").stat().st_size > 0
    assert "MSR adam" in capsys.readouterr().out
