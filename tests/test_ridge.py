import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tasks
from metasym.errors import MetasymError
from metasym.layers import Dense, SharedLinear, split_parameters
from metasym.meta import MetaConfig, MetaLearner, task_losses
from metasym.meta.inner import LOSSES
from metasym.meta.ridge import check_affine, ridge_adapt, ridge_solve
from metasym.models import build_model


def _double(batch):
    return type(batch)(
        *(t.double() for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y))
    )


def _augmented_lstsq(jac, residual, rates):
    # (1/m)||J d - r||^2 + 1/2 d^T A^{-1} d
    #   == ||[J / sqrt(m); (2A)^{-1/2}] d - [r / sqrt(m); 0]||^2
    m, p = jac.shape
    lhs = torch.cat([jac / m**0.5, torch.diag((2 * rates) ** -0.5)])
    rhs = torch.cat([residual / m**0.5, residual.new_zeros(p)])
    return torch.linalg.lstsq(lhs, rhs[:, None]).solution[:, 0]


@pytest.mark.parametrize("m, p", [(40, 7), (12, 50)])  # primal and dual form
def test_ridge_solve_matches_the_augmented_least_squares_problem(m, p, gen):
    jac = torch.randn(m, p, generator=gen, dtype=torch.float64)
    residual = torch.randn(m, generator=gen, dtype=torch.float64)
    rates = torch.rand(p, generator=gen, dtype=torch.float64) + 0.05
    delta = ridge_solve(jac, residual, rates)
    assert torch.allclose(delta, _augmented_lstsq(jac, residual, rates), atol=1e-10)

    # explicit normal equations: (J^T J + (m/2) A^{-1}) d = J^T r
    normal = jac.T @ jac + (m / 2) * torch.diag(1 / rates)
    assert torch.allclose(delta, torch.linalg.solve(normal, jac.T @ residual), atol=1e-10)


def test_ridge_solve_limits_are_least_squares_and_a_gradient_step(gen):
    jac = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    residual = torch.randn(30, generator=gen, dtype=torch.float64)
    big = torch.full((4,), 1e9, dtype=torch.float64)
    lstsq = torch.linalg.lstsq(jac, residual[:, None]).solution[:, 0]
    assert torch.allclose(ridge_solve(jac, residual, big), lstsq, atol=1e-6)

    # a tiny rate gives one SGD step on the mean squared error: -alpha * grad = alpha (2/m) J^T r
    small = torch.full((4,), 1e-7, dtype=torch.float64)
    step = 1e-7 * (2 / 30) * jac.T @ residual
    assert torch.allclose(ridge_solve(jac, residual, small), step, rtol=1e-5)
    assert torch.equal(
        ridge_solve(jac, residual, torch.zeros(4, dtype=torch.float64)).abs().sum(),
        torch.tensor(0.0, dtype=torch.float64),
    )


def test_ridge_adapt_on_shared_linear_solves_the_explicit_problem(gen):
    torch.manual_seed(0)
    layer = SharedLinear(9, 6, 4).double()
    fast, meta = split_parameters(layer)
    x = torch.randn(3, 9, generator=gen, dtype=torch.float64)
    y = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    lrs = torch.tensor([0.7], dtype=torch.float64)

    # y = (x ⊗ U) v: J[(n, o), k] = sum_i x[n, i] U[(o, i), k]
    jac = torch.einsum("ni,oik->nok", x, layer.U.view(6, 9, 4)).reshape(18, 4)
    residual = (y - layer(x)).reshape(-1)
    expected = layer.v + _augmented_lstsq(jac, residual, torch.full((4,), 0.7, dtype=torch.float64))
    adapted = ridge_adapt(layer, fast, meta, lrs, x, y)
    assert torch.allclose(adapted["v"], expected, atol=1e-10)


def test_under_determined_dense_fit_is_the_one_nearest_the_initial_weights(gen):
    torch.manual_seed(0)
    layer = Dense(8, 5, bias=True).double()
    fast, meta = split_parameters(layer)
    x = torch.randn(2, 8, generator=gen, dtype=torch.float64)  # 10 equations, 45 unknowns
    y = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    lrs = torch.full((2,), 1e9, dtype=torch.float64)
    adapted = ridge_adapt(layer, fast, meta, lrs, x, y)
    assert torch.allclose(F.linear(x, adapted["weight"], adapted["bias"]), y, atol=1e-6)

    # minimum-norm change: phi0 + pinv(J) r0
    jac = torch.cat(
        [
            torch.kron(torch.eye(5, dtype=torch.float64), x[:, None, :]).reshape(10, 40),
            torch.eye(5, dtype=torch.float64).repeat(2, 1),
        ],
        dim=1,
    )  # (n*o, o*i + o)
    delta = torch.linalg.pinv(jac) @ (y - layer(x)).reshape(-1)
    change = torch.cat(
        [(adapted["weight"] - layer.weight).reshape(-1), adapted["bias"] - layer.bias]
    )
    assert torch.allclose(change, delta, atol=1e-6)


def test_vmapped_task_losses_equal_a_loop_over_tasks(gen):
    fam = tasks.make_family("conv1d", n_in=16)
    torch.manual_seed(0)
    model = build_model("msr_fc", fam).double()
    fast, meta = split_parameters(model)
    batch = _double(fam.sample(5, 2, 4, generator=gen))
    lrs = torch.tensor([3.0], dtype=torch.float64)
    losses = task_losses(model, fast, meta, lrs, batch, solver="ridge")
    for t in range(5):
        adapted = ridge_adapt(model, fast, meta, lrs, batch.support_x[t], batch.support_y[t])
        query = torch.func.functional_call(model, {**meta, **adapted}, (batch.query_x[t],))
        assert torch.allclose(losses[t], F.mse_loss(query, batch.query_y[t]), atol=1e-12)


@pytest.mark.parametrize("model_name", ["conv", "lc"])
def test_a_conv_or_lc_model_recovers_a_convolution_task_exactly(model_name, gen):
    fam = tasks.make_family("conv1d", n_in=20)
    torch.manual_seed(0)
    model = build_model(model_name, fam).double()
    fast, meta = split_parameters(model)
    batch = _double(fam.sample(4, 6, 6, generator=gen))
    lrs = torch.full((len(fast),), 1e10, dtype=torch.float64)
    losses = task_losses(model, fast, meta, lrs, batch, solver="ridge")
    assert losses.max() < 1e-12


def test_meta_gradient_through_the_solve_matches_finite_differences(gen):
    fam = tasks.make_family("conv1d", n_in=12)
    torch.manual_seed(0)
    model = build_model("msr_fc", fam).double()
    with torch.no_grad():
        model.U.mul_(30)
    batch = _double(fam.sample(4, 1, 5, generator=gen))
    lrs = torch.tensor([0.8], dtype=torch.float64, requires_grad=True)
    fast, meta = split_parameters(model)
    loss = task_losses(model, fast, meta, lrs, batch, solver="ridge").mean()
    g_u, g_v, g_lr = torch.autograd.grad(loss, [model.U, model.v, lrs])

    def meta_loss(du: float = 0.0, dv: float = 0.0, dlr: float = 0.0) -> float:
        shifted_meta = {"U": meta["U"] + du * direction}
        shifted_fast = {"v": fast["v"] + dv * direction_v}
        return (
            task_losses(model, shifted_fast, shifted_meta, lrs + dlr, batch, solver="ridge")
            .mean()
            .item()
        )

    direction = torch.randn_like(model.U, generator=gen)
    direction_v = torch.randn_like(model.v, generator=gen)
    eps = 1e-6
    for kw, analytic in (
        ("du", (g_u * direction).sum()),
        ("dv", (g_v * direction_v).sum()),
        ("dlr", g_lr.sum()),
    ):
        numeric = (meta_loss(**{kw: eps}) - meta_loss(**{kw: -eps})) / (2 * eps)
        assert abs(numeric - analytic.item()) < 1e-6 * max(1.0, abs(numeric)), kw
    assert g_lr.abs().item() > 1e-6  # the ridge strength is learned


def test_non_squared_losses_and_non_affine_models_are_refused(gen):
    layer = SharedLinear(6, 4, 2)
    fast, meta = split_parameters(layer)
    x, y = torch.randn(2, 6, generator=gen), torch.randn(2, 4, generator=gen)
    with pytest.raises(MetasymError, match="solves a squared loss; got loss 'cross_entropy'"):
        ridge_adapt(layer, fast, meta, torch.ones(1), x, y, LOSSES["cross_entropy"])

    squashed = nn.Sequential(Dense(6, 4), nn.Tanh())
    fast, meta = split_parameters(squashed)
    with pytest.raises(MetasymError, match="not affine|is not"):
        ridge_adapt(squashed, fast, meta, torch.ones(1), x, y)

    class Quadratic(nn.Module):
        fast_parameters = ("v",)

        def __init__(self) -> None:
            super().__init__()
            self.v = nn.Parameter(torch.ones(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :4] * self.v**2

    quad = Quadratic()
    with pytest.raises(MetasymError, match="Quadratic is not"):
        check_affine(quad, *split_parameters(quad), x)

    # affine with fast biases passes
    biased = SharedLinear(6, 4, 2, bias=True)
    check_affine(biased, *split_parameters(biased), x)


def test_ridge_needs_the_func_backend_and_a_known_solver():
    fam = tasks.make_family("conv1d", n_in=10)
    model = build_model("msr_fc", fam)
    fast, meta = split_parameters(model)
    batch = fam.sample(2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(MetasymError, match="runs on backend 'func' only; got 'higher'"):
        task_losses(model, fast, meta, torch.ones(1), batch, backend="higher", solver="ridge")
    with pytest.raises(MetasymError, match="unknown inner solver 'newton'"):
        MetaConfig(inner="newton")


def test_ridge_meta_training_learns_the_convolution_sharing():
    # the MSR paper's setting: 70 -> 68 valid convolutions, 1 support and 19 query examples
    fam = tasks.make_family("conv1d")
    torch.manual_seed(0)
    config = MetaConfig(
        outer_steps=150, inner="ridge", inner_lr=100.0, outer_lr=0.01, eval_tasks=100
    )
    learner = MetaLearner(build_model("msr_fc", fam), fam, config)
    learner.fit()
    assert learner.evaluate().mean < 0.01
