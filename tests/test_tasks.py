import numpy as np
import pytest
import torch

import tasks
from metasym.errors import MetasymError
from tasks.base import TaskBatch, weights_from_partition
from tasks.digits import rotate_offset


def test_conv1d_targets_are_valid_convolutions(gen):
    fam = tasks.make_family("conv1d")
    assert (fam.in_features, fam.out_features) == (70, 68)
    batch = fam.sample(4, 2, 5, generator=gen)
    assert batch.support_x.shape == (4, 2, 70) and batch.query_y.shape == (4, 5, 68)
    # recover each task's filter from the first outputs, then check every output with numpy
    x, y = batch.support_x[0, 0].numpy(), batch.support_y[0, 0].numpy()
    w = weights_from_partition(fam.true_partition(), torch.eye(3))  # basis maps, (3, 68, 70)
    design = np.stack([(w[j].numpy() @ x) for j in range(3)], axis=1)  # (68, 3)
    f, *_ = np.linalg.lstsq(design, y, rcond=None)
    expected = np.correlate(x, f, mode="valid")
    np.testing.assert_allclose(y, expected, atol=1e-4)


def test_circular_conv1d_wraps_and_is_shift_equivariant(gen):
    fam = tasks.make_family("conv1d", n_in=16, circular=True)
    w = fam._weights(3, gen)  # (3, 16, 16)
    shift = torch.roll(torch.eye(16), 1, dims=0)  # x -> roll(x, 1)
    torch.testing.assert_close(w @ shift, shift @ w)
    part = fam.true_partition()
    assert part[15, 0] == 1 and part[15, 1] == 2 and part[0, 2] == 2 and part[0, 3] == -1


def test_locally_connected_rows_follow_connectivity(gen):
    fam = tasks.make_family("locally_connected1d", rank=2)
    w = fam._weights(5, gen)
    band = fam.true_partition() >= 0
    assert torch.count_nonzero(w[:, ~band]) == 0
    # each task's 68 filters span a rank-2 space, and differ between positions
    filters = torch.stack([w[:, o, o : o + 3] for o in range(68)], dim=1)  # (b, 68, 3)
    assert torch.linalg.matrix_rank(filters[0]) == 2
    assert (filters[0, 0] - filters[0, 1]).abs().max() > 1e-3
    assert fam.true_group() is None


def test_digits_p4_targets_are_lifting_convolutions(gen):
    fam = tasks.make_family("digits_p4")
    batch = fam.sample(2, 1, 3, generator=gen, split="test")
    assert batch.support_x.shape == (2, 1, 64) and batch.query_y.shape == (2, 3, 256)
    # reconstruct the filter from the weights and evaluate the formula pixel by pixel
    filters = torch.randn(1, 9, generator=gen)
    w = weights_from_partition(fam.true_partition(), filters)[0]
    img = batch.query_x[0, 0].view(8, 8)
    out = (w @ img.flatten()).view(4, 8, 8)
    taps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    for r in range(4):
        for y in range(8):
            for x in range(8):
                acc = 0.0
                for t, (dy, dx) in enumerate(taps):
                    ry, rx = rotate_offset(dy, dx, r)
                    acc += filters[0, t] * img[(y + ry) % 8, (x + rx) % 8]
                assert abs(out[r, y, x] - acc) < 1e-4


def test_digits_train_and_test_images_are_disjoint():
    fam = tasks.make_family("digits_p4")
    train, test = set(fam.image_ids["train"].tolist()), set(fam.image_ids["test"].tolist())
    assert not train & test and len(train) + len(test) == 1797
    assert abs(fam.images["train"].mean()) < 1e-4 and abs(fam.images["train"].std() - 1) < 1e-3


def test_sampling_is_seeded():
    fam = tasks.make_family("conv1d")
    a = fam.sample(3, generator=torch.Generator().manual_seed(7))
    b = fam.sample(3, generator=torch.Generator().manual_seed(7))
    c = fam.sample(3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.query_y, b.query_y) and not torch.equal(a.query_y, c.query_y)


def test_true_groups_preserve_true_partitions():
    for fam in (
        tasks.make_family("conv1d", n_in=12, circular=True),
        tasks.make_family("digits_p4"),
    ):
        part = fam.true_partition()
        o, i = part.shape
        group = fam.true_group()
        assert group is not None
        for g in group.generators:
            perm = torch.tensor(g.array_form)
            assert torch.all(perm[:o] < o)
            po, pi = perm[:o], perm[o:] - o
            moved = torch.empty_like(part)
            moved[po[:, None], pi[None, :]] = part
            assert torch.equal(moved, part)
    assert tasks.make_family("conv1d").true_group() is None


@pytest.mark.parametrize(
    ("name", "options", "fragment"),
    [
        ("conv2d", {}, "unknown task 'conv2d'"),
        ("conv1d", {"n_in": 0}, "n_in must be a positive integer"),
        ("conv1d", {"kernel_size": 80}, "kernel_size 80 exceeds n_in 70"),
        ("conv1d", {"width": 3}, "bad options"),
        ("locally_connected1d", {"rank": -2}, "rank must be a positive integer"),
        ("digits_p4", {"test_fraction": 1.5}, "test_fraction"),
    ],
)
def test_bad_family_options_are_refused(name, options, fragment):
    with pytest.raises(MetasymError, match=fragment):
        tasks.make_family(name, **options)


def test_bad_sample_sizes_are_refused(gen):
    fam = tasks.make_family("digits_p4")
    with pytest.raises(MetasymError, match="n_support must be a positive integer; got 0"):
        fam.sample(2, 0, 5, generator=gen)
    with pytest.raises(MetasymError, match="exceeds the 539 test images"):
        fam.sample(1, 500, 100, generator=gen, split="test")
    with pytest.raises(MetasymError, match="split must be"):
        fam.sample(1, generator=gen, split="valid")


def test_task_batch_checks_shapes_and_values():
    ok = torch.zeros(2, 1, 3)
    with pytest.raises(MetasymError, match="number of tasks"):
        TaskBatch(ok, torch.zeros(3, 1, 3), ok, ok)
    with pytest.raises(MetasymError, match="shape \\(b, n, features\\)"):
        TaskBatch(torch.zeros(2, 3), ok, ok, ok)
    bad = TaskBatch(ok, ok, ok, torch.full((2, 1, 3), float("nan")))
    with pytest.raises(MetasymError, match="query_y holds 6 non-finite"):
        bad.check_finite()
