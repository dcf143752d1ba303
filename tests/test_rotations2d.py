import pytest
import torch

import tasks
from metasym.errors import MetasymError
from metasym.gconv import (
    PaddedSharedConv2d,
    lifting_sharing,
    multiplication_table,
    point_group_elements,
    span_energy,
    transform_images,
)
from metasym.layers import split_parameters
from metasym.meta import MetaConfig, MetaLearner
from metasym.models import build_model
from tasks.base import weights_from_partition

GROUPS = [("c4", 4), ("d4", 8)]


def _permute_outputs(y: torch.Tensor, perm) -> torch.Tensor:
    """Move output units: entry ``j`` goes to ``perm[j]``. Shape: ``(..., o)``."""
    out = torch.empty_like(y)
    out[..., torch.as_tensor(perm)] = y
    return out


@pytest.mark.parametrize(("group", "order"), GROUPS)
def test_shapes_and_target_scale(group, order, gen):
    fam = tasks.make_family("rotations2d", group=group, out_channels=3, size=9)
    assert fam.in_shape == (1, 9, 9) and fam.out_shape == (3 * order, 9, 9)
    assert fam.filter_size == 27 and fam.kernel_size == 3 and fam.conv_padding is None
    batch = fam.sample(16, 2, 5, generator=gen)
    assert batch.support_x.shape == (16, 2, 81) and batch.query_y.shape == (16, 5, 3 * order * 81)
    assert 0.8 < batch.query_y.pow(2).mean().item() < 1.25


def test_group_elements_form_c4_and_d4():
    d4 = point_group_elements("d4")
    assert len({tuple(m.flatten()) for m in d4}) == 8
    assert (point_group_elements("c4") == d4[:4]).all()
    table = multiplication_table("d4")
    # a Latin square with the identity at index 0, closed under products
    assert all(sorted(row) == list(range(8)) for row in table.tolist())
    assert (table[0] == torch.arange(8).numpy()).all()


@pytest.mark.parametrize(
    ("group", "inputs"), [("c4", "random"), ("d4", "random"), ("d4", "digits")]
)
def test_targets_match_the_partition_and_the_formula(group, inputs, gen):
    fam = tasks.make_family("rotations2d", group=group, inputs=inputs, size=11)
    filters = fam.filters(1, gen)
    x = fam.sample(1, 1, 3, generator=gen).query_x  # (1, 3, 121)
    y = fam.apply(filters, x)[0]
    W = weights_from_partition(fam.true_partition(), filters.view(1, -1))[0]
    torch.testing.assert_close(y, x[0] @ W.T, atol=1e-5, rtol=1e-5)

    # channel (c, g) for the identity and the quarter turn, pixel by pixel at a border pixel
    img = x[0, 0].view(11, 11)
    maps = y[0].view(2, -1, 11, 11)
    f = filters[0, 1]
    for g, rotated in ((0, f), (1, torch.rot90(f, -1))):
        acc = sum(
            rotated[dy + 1, dx + 1] * img[0 + dy, 5 + dx]
            for dy in (0, 1)  # row -1 lies outside the image
            for dx in (-1, 0, 1)
        )
        assert abs(maps[1, g, 0, 5] - acc) < 1e-5


@pytest.mark.parametrize(("group", "order"), GROUPS)
def test_targets_are_exactly_equivariant(group, order, gen):
    fam = tasks.make_family("rotations2d", group=group, size=9)
    filters = fam.filters(2, gen)
    x = torch.randn(2, 3, 81, generator=gen)
    y = fam.apply(filters, x)
    for h in range(order):
        moved = transform_images(x.view(2, 3, 9, 9), group, h).view(2, 3, 81)
        expected = _permute_outputs(y, fam.output_permutation(h))
        torch.testing.assert_close(fam.apply(filters, moved), expected, atol=1e-5, rtol=1e-5)


def test_group_action_on_images_is_rotation_and_flip():
    img = torch.arange(25.0).view(5, 5)
    torch.testing.assert_close(transform_images(img, "c4", 1), torch.rot90(img, -1))
    torch.testing.assert_close(transform_images(img, "d4", 4), torch.flip(img, dims=[-1]))


@pytest.mark.parametrize(("group", "order"), GROUPS)
def test_true_group_preserves_true_partition(group, order):
    fam = tasks.make_family("rotations2d", group=group, size=7)
    part = fam.true_partition()
    o, i = part.shape
    assert o == 2 * order * 49 and i == 49
    assert (part >= 0).sum() == 2 * order * (7 * 7 * 9 - 4 * 7 * 3 + 4)  # border taps absent
    g = fam.true_group()
    assert g is not None and g.degree == o + i and g.order() == order
    for p in g.generators:
        perm = torch.tensor(p.array_form + list(range(len(p.array_form), o + i)))
        po, pi = perm[:o], perm[o:] - o
        assert torch.all(po < o)
        moved = torch.empty_like(part)
        moved[po[:, None], pi[None, :]] = part
        assert torch.equal(moved, part)


def test_lifting_sharing_ties_each_tap_across_the_group():
    U = lifting_sharing("d4", 2)
    assert U.shape == (2 * 8 * 9, 18)
    assert torch.equal(U.sum(1), torch.ones(144)) and torch.equal(U.sum(0), torch.full((18,), 8.0))
    # the centre tap is fixed by every element
    centre = U.view(2, 8, 9, 18)[:, :, 4]
    assert torch.equal(centre[0].argmax(-1), torch.full((8,), 4))


@pytest.mark.parametrize(("group", "order"), GROUPS)
def test_gconv_is_equivariant_and_reproduces_the_tasks(group, order, gen):
    fam = tasks.make_family("rotations2d", group=group, size=9)
    layer = build_model("gconv", fam)
    with torch.no_grad():
        layer.v.copy_(torch.randn(18, generator=gen))
    x = torch.randn(4, 81, generator=gen)
    y = layer(x)
    for h in range(order):
        moved = transform_images(x.view(4, 9, 9), group, h).view(4, 81)
        expected = _permute_outputs(y, fam.output_permutation(h))
        torch.testing.assert_close(layer(moved), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, fam.apply(layer.v.view(1, 2, 3, 3), x[None])[0])


def test_models_shapes_and_fast_meta_split():
    fam = tasks.make_family("rotations2d", group="d4", size=9)
    x = torch.randn(3, 81)
    expected = {
        "msr_conv": (["v"], ["U"]),
        "gconv": (["v"], []),
        "conv2d": (["weight"], []),
    }
    for name, (fast_names, meta_names) in expected.items():
        model = build_model(name, fam)
        assert model(x).shape == (3, 16 * 81)
        fast, meta = split_parameters(model)
        assert list(fast) == fast_names and list(meta) == meta_names
    msr, gconv = build_model("msr_conv", fam), build_model("gconv", fam)
    assert msr.U.shape == (16 * 9, 18) and msr.U.requires_grad
    assert "U" in dict(gconv.named_buffers()) and not gconv.U.requires_grad
    assert build_model("msr_conv", fam, latent=5).U.shape == (144, 5)


def test_digit_inputs_are_centred_standardized_and_split(gen):
    fam = tasks.make_family("rotations2d", inputs="digits")
    train, test = fam.images["train"], fam.images["test"]
    assert train.shape[1] == 225 and len(train) + len(test) == 1797
    assert not set(fam.image_ids["train"].tolist()) & set(fam.image_ids["test"].tolist())
    assert abs(train.mean()) < 1e-4 and abs(train.std() - 1) < 1e-3
    # outside the centred 8x8 block every frame holds the same background value
    frames = train.view(-1, 15, 15)
    block = torch.zeros(15, 15, dtype=torch.bool)
    block[3:11, 3:11] = True
    background = frames[:, ~block]
    assert torch.allclose(background, background[0, 0].expand_as(background))
    assert frames[:, block].std() > 0.5


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"group": "c6"}, "unknown group 'c6'.*valid groups: c4, d4"),
        ({"inputs": "mnist"}, "unknown inputs 'mnist'.*random, digits"),
        ({"out_channels": 0}, "out_channels must be a positive integer; got 0"),
        ({"out_channels": -2}, "out_channels must be a positive integer; got -2"),
        ({"size": 5, "inputs": "digits"}, "size must be at least 8 for digits"),
        ({"test_fraction": 0.0}, "test_fraction"),
    ],
)
def test_bad_options_are_refused(options, fragment):
    with pytest.raises(MetasymError, match=fragment):
        tasks.make_family("rotations2d", **options)


def test_models_refuse_families_without_images():
    fam = tasks.make_family("conv1d")
    for name in ("msr_conv", "gconv", "conv2d"):
        with pytest.raises(MetasymError, match="does not fit task 'conv1d'"):
            build_model(name, fam)
    with pytest.raises(MetasymError, match="expects flat inputs of 81"):
        build_model("gconv", tasks.make_family("rotations2d", size=9))(torch.zeros(2, 80))
    with pytest.raises(MetasymError, match="sharing matrix has shape \\(4, 2\\)"):
        PaddedSharedConv2d((1, 5, 5), 2, 3, sharing=torch.zeros(4, 2))


@pytest.mark.slow
def test_msr_conv_meta_learns_close_to_gconv_and_beats_conv2d():
    fam = tasks.make_family("rotations2d", group="c4", size=11)
    config = MetaConfig(
        outer_steps=300, tasks_per_step=16, outer_lr=1e-2, n_support=1, n_query=4, eval_tasks=200
    )
    results = {}
    for name in ("msr_conv", "gconv", "conv2d"):
        torch.manual_seed(0)
        learner = MetaLearner(build_model(name, fam), fam, config)
        learner.fit()
        results[name] = learner.evaluate()
        if name == "msr_conv":
            energy = span_energy(learner.model.U, lifting_sharing("c4", 2))
    # the learned U lies in the span of the C4 sharing (a random U would put 18/72 there)
    assert energy > 0.95
    msr, gconv, conv = results["msr_conv"], results["gconv"], results["conv2d"]
    assert msr.mean < 1.2 * gconv.mean
    assert msr.mean + msr.ci95 < conv.mean - conv.ci95
