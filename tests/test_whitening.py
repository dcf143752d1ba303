"""Checks of batch whitening (arXiv 2103.16634): affine invariance, identity covariance, NS."""

import pytest
import torch

from metasym.errors import MetasymError
from metasym.theory.whitening import (
    BatchWhitening,
    affine_invariance_gap,
    batch_standardize,
    batch_whiten,
    inverse_sqrt,
    logistic_regression_gd,
    newton_schulz_error_table,
    newton_schulz_inverse_sqrt,
)

F64 = torch.float64


def _data(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=gen, dtype=F64)
    x = torch.randn(n, d, generator=gen, dtype=F64) @ mix.T + 2.0
    score = (x - x.mean(0)) @ torch.randn(d, generator=gen, dtype=F64)
    y = (score + score.std() * torch.randn(n, generator=gen, dtype=F64) > 0).to(F64)
    return x, y


def _affine(d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q1, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=F64))
    q2, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=F64))
    sv = torch.linspace(0.5, 2.0, d, dtype=F64)
    return (q1 * sv) @ q2.T, 5.0 * torch.randn(d, generator=gen, dtype=F64)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_whitened_logistic_regression_is_affine_invariant(seed: int) -> None:
    x, y = _data(256, 8)
    a, b = _affine(8, seed)
    xt = x @ a.T + b
    ref = logistic_regression_gd(batch_whiten(x, eps=0.0), y, steps=500, lr=1.0)
    new = logistic_regression_gd(batch_whiten(xt, eps=0.0), y, steps=500, lr=1.0)
    assert (torch.sigmoid(new) - torch.sigmoid(ref)).abs().max() < 1e-10
    assert (new - ref).abs().max() < 1e-10

    # Per-feature standardisation only removes diagonal maps: predictions move (by less than
    # they would after convergence to the maximum-likelihood fit, which is affine-equivariant).
    ref_s = logistic_regression_gd(batch_standardize(x), y, steps=500, lr=1.0)
    new_s = logistic_regression_gd(batch_standardize(xt), y, steps=500, lr=1.0)
    assert (new_s - ref_s).abs().max() > 2e-2
    assert (torch.sigmoid(new_s) - torch.sigmoid(ref_s)).abs().max() > 3e-3


def test_eval_mode_predictions_on_new_points_are_affine_invariant() -> None:
    x, y = _data(256, 8)
    x_new, _ = _data(50, 8, seed=7)
    a, b = _affine(8, 11)
    logits = []
    for f in (lambda t: t, lambda t: t @ a.T + b):
        layer = BatchWhitening(8, eps=0.0, momentum=1.0).to(F64)
        z = layer(f(x))
        layer.eval()
        logits.append(logistic_regression_gd(z, y, x_eval=layer(f(x_new))))
    assert (logits[0] - logits[1]).abs().max() < 1e-10


def test_sample_norm_breaks_affine_invariance_but_gives_per_sample_scale_invariance() -> None:
    x, y = _data(256, 8)
    a, b = _affine(8, 4)
    ref = logistic_regression_gd(batch_whiten(x, eps=0.0, sample_norm=True), y)
    new = logistic_regression_gd(batch_whiten(x @ a.T + b, eps=0.0, sample_norm=True), y)
    assert (new - ref).abs().max() > 1e-3
    scales = torch.rand(256, 1, generator=torch.Generator().manual_seed(0), dtype=F64) + 0.1
    z1 = batch_whiten(x, sample_norm=True)
    z2 = batch_whiten(x * scales, sample_norm=True)
    assert torch.allclose(z1, z2, atol=1e-12)


@pytest.mark.parametrize("method", ["eig", "newton_schulz"])
def test_whitened_linear_batch_has_identity_covariance(method: str) -> None:
    x, _ = _data(512, 8)
    z = batch_whiten(x, method=method, ns_iters=30)
    cov = z.T @ z / z.shape[0]
    assert z.mean(0).abs().max() < 1e-12
    assert (cov - torch.eye(8, dtype=F64)).abs().max() < 1e-3


@pytest.mark.parametrize("method", ["eig", "newton_schulz"])
def test_whitened_conv_batch_has_identity_channel_covariance(method: str) -> None:
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(4, 4, generator=gen, dtype=F64)
    x = torch.einsum("dc,nchw->ndhw", mix, torch.randn(16, 4, 6, 5, generator=gen, dtype=F64))
    layer = BatchWhitening(4, method=method, ns_iters=30).to(F64)
    z = layer(x)
    assert z.shape == x.shape
    rows = z.permute(0, 2, 3, 1).reshape(-1, 4)
    cov = rows.T @ rows / rows.shape[0]
    assert (cov - torch.eye(4, dtype=F64)).abs().max() < 1e-3
    # Each channel is mixed only with channels at the same pixel: whiten pixel by pixel agrees.
    expected = batch_whiten(x.permute(0, 2, 3, 1).reshape(-1, 4), method=method, ns_iters=30)
    assert torch.allclose(rows, expected, atol=1e-12)


def test_running_statistics_follow_momentum() -> None:
    x, _ = _data(64, 3)
    layer = BatchWhitening(3, momentum=0.25).to(F64)
    layer(x)
    xc = x - x.mean(0)
    cov = xc.T @ xc / 64
    assert torch.allclose(layer.running_mean, 0.25 * x.mean(0))
    assert torch.allclose(layer.running_cov, 0.75 * torch.eye(3, dtype=F64) + 0.25 * cov)
    layer.eval()
    eye = torch.eye(3, dtype=F64)
    expected = (x - layer.running_mean) @ inverse_sqrt(layer.running_cov + 1e-5 * eye)
    assert torch.allclose(layer(x), expected)


def test_whitening_is_differentiable() -> None:
    x, _ = _data(32, 4)
    x.requires_grad_(True)
    for method in ("eig", "newton_schulz"):
        batch_whiten(x, method=method).pow(3).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()


def test_newton_schulz_matches_eig_and_error_grows_with_condition_number() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=gen, dtype=F64)
    cov = a @ a.T + 0.5 * torch.eye(6, dtype=F64)
    assert torch.allclose(newton_schulz_inverse_sqrt(cov, 40), inverse_sqrt(cov), atol=1e-10)
    table = newton_schulz_error_table([1e1, 1e3, 1e6], [5, 10, 30], dim=8)
    assert table.shape == (3, 3)
    assert (table[:, 0].diff() > 0).all()  # fixed iterations: worse with conditioning
    assert (table[0].diff() <= 1e-12).all()  # fixed conditioning: better with iterations
    assert table[:, -1].max() < 1e-8  # 30 iterations resolve condition number 1e6


def test_affine_invariance_gap_reports_both_preprocessings() -> None:
    gaps = affine_invariance_gap(n_maps=2, steps=100)
    assert gaps["whiten"].max() < 1e-10 < 1e-3 < gaps["standardize"].max()


def test_bad_inputs_raise_metasym_error() -> None:
    with pytest.raises(MetasymError, match="method"):
        BatchWhitening(3, method="cholesky")  # type: ignore[arg-type]
    with pytest.raises(MetasymError, match=r"\(n, 3\)"):
        BatchWhitening(3)(torch.zeros(5, 4))
    with pytest.raises(MetasymError, match="shape"):
        batch_whiten(torch.zeros(5, 3, 2))
    with pytest.raises(MetasymError, match="momentum"):
        BatchWhitening(3, momentum=0.0)
    with pytest.raises(MetasymError, match="at least 2 rows"):
        batch_whiten(torch.zeros(1, 3))


def test_singular_batch_warns() -> None:
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.warns(RuntimeWarning, match="smallest eigenvalue"):
        batch_whiten(x, eps=0.0)


@pytest.mark.slow
def test_main_writes_plot(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from metasym.theory import whitening

    whitening.main(["--out", str(tmp_path), "--dim", "6"])
    assert (tmp_path / "whitening.png").stat().st_size > 0
    assert "Newton-Schulz" in capsys.readouterr().out
