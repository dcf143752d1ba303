import pytest
import torch

import tasks
from metasym.errors import MetasymError
from metasym.layers import (
    Conv,
    Dense,
    LocallyConnected1d,
    SharedConv2d,
    SharedLinear,
    split_parameters,
)
from metasym.models import build_model
from tasks.base import weights_from_partition


def test_shared_linear_weight_is_reshaped_u_v():
    layer = SharedLinear(5, 4, latent=3)
    W = layer.weight()
    assert W.shape == (4, 5)
    torch.testing.assert_close(W[2, 3], layer.U[2 * 5 + 3] @ layer.v)
    x = torch.randn(7, 5)
    torch.testing.assert_close(layer(x), x @ W.T)
    assert abs(layer.U.std().item() - 0.01) < 0.005


def test_shared_linear_bias_is_tied_and_fast():
    layer = SharedLinear(5, 4, latent=2, bias=True)
    fast, meta = split_parameters(layer)
    assert sorted(fast) == ["bias_v", "v"] and sorted(meta) == ["U", "bias_U"]
    x = torch.zeros(1, 5)
    torch.testing.assert_close(layer(x)[0], layer.bias_U @ layer.bias_v)


def test_fixed_sharing_is_a_buffer():
    U = torch.eye(6)[:, :2]
    layer = SharedLinear(3, 2, latent=2, sharing=U)
    fast, meta = split_parameters(layer)
    assert list(fast) == ["v"] and meta == {}
    with pytest.raises(MetasymError, match="expected \\(o\\*i, k\\) = \\(6, 3\\)"):
        SharedLinear(3, 2, latent=3, sharing=U)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"in_features": 3, "out_features": 2, "latent": 7}, "latent size 7 exceeds out\\*in = 6"),
        (
            {"in_features": 3, "out_features": 2, "latent": 0},
            "latent must be a positive integer; got 0",
        ),
        (
            {"in_features": 0, "out_features": 2, "latent": 1},
            "in_features must be a positive integer",
        ),
    ],
)
def test_shared_linear_refuses_bad_sizes(kwargs, fragment):
    with pytest.raises(MetasymError, match=fragment):
        SharedLinear(**kwargs)


def test_shared_linear_refuses_wrong_input_width():
    with pytest.raises(MetasymError, match="expects inputs with 5 features; got shape \\(2, 4\\)"):
        SharedLinear(5, 3, 2)(torch.zeros(2, 4))


def test_baselines_reproduce_their_task_maps(gen):
    # conv and lc baselines can express the generating map exactly when given the filter
    fam = tasks.make_family("conv1d")
    f = torch.randn(1, 3, generator=gen)
    W = weights_from_partition(fam.true_partition(), f)[0]
    x = torch.randn(4, 70, generator=gen)
    conv = build_model("conv", fam)
    lc = build_model("lc", fam)
    with torch.no_grad():
        conv.weight.copy_(f.view(1, 1, 3))
        lc.weight.copy_(f.expand(68, 3))
    torch.testing.assert_close(conv(x), x @ W.T)
    torch.testing.assert_close(lc(x), x @ W.T)

    fam = tasks.make_family("conv1d", n_in=10, circular=True)
    W = weights_from_partition(fam.true_partition(), f)[0]
    conv = build_model("conv", fam)
    with torch.no_grad():
        conv.weight.copy_(f.view(1, 1, 3))
    x = torch.randn(4, 10, generator=gen)
    torch.testing.assert_close(conv(x), x @ W.T)


def test_conv2d_baseline_expresses_the_lifting_map(gen):
    from tasks.digits import rotate_offset

    fam = tasks.make_family("digits_p4")
    f = torch.randn(1, 9, generator=gen)
    W = weights_from_partition(fam.true_partition(), f)[0]
    conv = build_model("conv", fam)
    kernel = torch.zeros(4, 1, 3, 3)
    taps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    for r in range(4):
        for t, (dy, dx) in enumerate(taps):
            ry, rx = rotate_offset(dy, dx, r)
            kernel[r, 0, ry + 1, rx + 1] = f[0, t]
    with torch.no_grad():
        conv.weight.copy_(kernel)
    x = torch.randn(3, 64, generator=gen)
    torch.testing.assert_close(conv(x), x @ W.T, atol=1e-5, rtol=1e-5)


def test_shared_conv2d_matches_a_conv_with_its_kernel(gen):
    layer = SharedConv2d(2, 3, 3, latent=4, padding=(1, 1, 1, 1))
    x = torch.randn(5, 2, 6, 6, generator=gen)
    kernel = (layer.U @ layer.v).view(3, 2, 3, 3)
    expected = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (1, 1, 1, 1), mode="circular"), kernel
    )
    torch.testing.assert_close(layer(x), expected)
    assert list(split_parameters(layer)[0]) == ["v"]


def test_fast_parameters_of_baselines_and_nested_models():
    assert list(split_parameters(Dense(3, 2, bias=True))[0]) == ["weight", "bias"]
    assert list(split_parameters(LocallyConnected1d(6, 3))[0]) == ["weight"]
    net = torch.nn.Sequential(SharedLinear(4, 4, 2), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    fast, meta = split_parameters(net)
    assert sorted(fast) == ["0.v", "2.bias", "2.weight"] and list(meta) == ["0.U"]


@pytest.mark.parametrize(
    ("model", "task", "fragment"),
    [
        ("mlp", "conv1d", "unknown model 'mlp'; valid models: msr_fc, dense, conv, lc"),
        (
            "lc",
            "digits_p4",
            "model .lc. does not fit task .digits_p4.; models for it: msr_fc, dense, conv",
        ),
    ],
)
def test_unknown_or_unfit_models_are_refused(model, task, fragment):
    with pytest.raises(MetasymError, match=fragment):
        build_model(model, tasks.make_family(task))


def test_conv_baseline_refuses_mismatched_shapes():
    with pytest.raises(MetasymError, match="equal rank"):
        Conv((1, 8, 8), (64,), 3)
    conv = Conv((10,), (9,), 3)  # valid conv gives 8 outputs, not 9
    with pytest.raises(MetasymError, match="produced shape \\(1, 8\\)"):
        conv(torch.zeros(2, 10))
