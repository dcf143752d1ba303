import pytest
import torch

import tasks
from metasym.errors import MetasymError
from metasym.fewshot import (
    ConvClassifier,
    SharedConvClassifier,
    ZeroPadSharedConv2d,
    invariance_error,
)
from metasym.groups import order
from metasym.layers import split_parameters
from metasym.meta import MetaConfig, MetaLearner
from metasym.models import build_model
from tasks.fewshot_digits import AugDigitsTasks, d4_pixel_permutations


@pytest.fixture(scope="module")
def family() -> AugDigitsTasks:
    return AugDigitsTasks(n_way=5, k_shot=2, n_query_per_class=3)


def _find(pool: torch.Tensor, sizes: torch.Tensor, image: torch.Tensor) -> tuple[int, int] | None:
    """(class slot, image index) of an exact copy of ``image`` in a padded pool, or None."""
    for c in range(len(sizes)):
        hits = (pool[c, : sizes[c]] == image).all(-1).nonzero()
        if len(hits):
            return c, int(hits[0])
    return None


def test_shapes_and_label_column(family, gen):
    batch = family.sample(3, generator=gen)
    assert batch.support_x.shape == (3, 10, 64) and batch.support_y.shape == (3, 10, 1)
    assert batch.query_x.shape == (3, 15, 64) and batch.query_y.shape == (3, 15, 1)
    assert batch.support_y.dtype == torch.float32
    assert family.in_shape == (1, 8, 8) and family.out_shape == (1,)
    assert (family.n_support, family.n_query) == (10, 15)


def test_every_label_has_k_support_and_q_query_examples(family, gen):
    batch = family.sample(4, generator=gen)
    for t in range(4):
        assert torch.bincount(batch.support_y[t, :, 0].long()).tolist() == [2] * 5
        assert torch.bincount(batch.query_y[t, :, 0].long()).tolist() == [3] * 5


@pytest.mark.parametrize("split", ["train", "test"])
def test_queries_are_d4_transforms_of_distinct_images_of_the_right_class(family, gen, split):
    perms = d4_pixel_permutations()
    pool, sizes = family.pools[split], family.pool_sizes[split]
    batch = family.sample(4, generator=gen, split=split)
    moved = 0
    for t in range(4):
        owner: dict[int, int] = {}
        used: set[tuple[int, int]] = set()
        for x, y in zip(batch.support_x[t], batch.support_y[t, :, 0].long().tolist(), strict=True):
            found = _find(pool, sizes, x)  # support images are not transformed
            assert found is not None
            assert owner.setdefault(y, found[0]) == found[0]
            used.add(found)
        for x, y in zip(batch.query_x[t], batch.query_y[t, :, 0].long().tolist(), strict=True):
            hits = [_find(pool, sizes, x[p]) for p in perms]
            found = next(h for h in hits if h is not None)
            assert found[0] == owner[y]
            assert found not in used
            used.add(found)
            moved += hits[0] is None
        assert sorted(owner.values()) == list(range(5))  # labels name 5 distinct classes
    assert moved > 0.6 * 4 * 15  # 7 of 8 elements move a digit


def test_meta_train_and_meta_test_classes_are_disjoint_halves(family):
    train, test = family.classes["train"].tolist(), family.classes["test"].tolist()
    assert sorted(train + test) == list(range(10)) and len(train) == len(test) == 5
    assert not {6, 9} <= set(test) and not {6, 9} <= set(train)
    for pool, sizes in ((family.pools["train"], family.pool_sizes["train"]),):
        probe = family.pools["test"][0, 0]
        assert _find(pool, sizes, probe) is None


def test_labels_are_a_fresh_permutation_per_task(gen):
    family = AugDigitsTasks(n_way=3, k_shot=1, n_query_per_class=1)
    batch = family.sample(40, generator=gen)
    pool, sizes = family.pools["train"], family.pool_sizes["train"]
    first = {_find(pool, sizes, batch.support_x[t, 0])[0] for t in range(40)}  # class of label 0
    assert len(first) == 5


def test_same_seed_gives_the_same_tasks(family):
    a = family.sample(2, generator=torch.Generator().manual_seed(3))
    b = family.sample(2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.query_x, b.query_x) and torch.equal(a.support_y, b.support_y)


def test_d4_permutations_form_the_pixel_group(family):
    perms = d4_pixel_permutations()
    assert len({tuple(p.tolist()) for p in perms}) == 8
    as_set = {tuple(p.tolist()) for p in perms}
    for p in perms:
        for q in perms:
            assert tuple(p[q].tolist()) in as_set
    assert order(family.pixel_group()) == 8


def test_bad_options_are_refused(family, gen):
    with pytest.raises(MetasymError, match="n_way must lie between 2 and 5 .* got 6"):
        AugDigitsTasks(n_way=6)
    with pytest.raises(MetasymError, match="k_shot must be a positive integer; got 0"):
        AugDigitsTasks(k_shot=0)
    with pytest.raises(MetasymError, match="exceeds the .* images of the smallest"):
        AugDigitsTasks(k_shot=100, n_query_per_class=100)
    with pytest.raises(MetasymError, match="n_support = 1, but 5-way 2-shot tasks hold"):
        family.sample(2, 1, 15, generator=gen)
    with pytest.raises(MetasymError, match="n_query = 19, but these tasks hold"):
        family.sample(2, 10, 19, generator=gen)
    with pytest.raises(MetasymError, match="n_way must lie between"):
        tasks.make_family("aug_digits", n_way=7)
    with pytest.raises(NotImplementedError, match="classification family"):
        family.true_partition()
    assert family.true_group() is None


def test_models_map_images_to_logits_and_split_fast_from_meta(family, gen):
    x = family.sample(1, generator=gen).query_x[0]
    maml = build_model("fewshot_maml_conv", family)
    msr = build_model("fewshot_msr_conv", family, channels=16)
    assert isinstance(maml, ConvClassifier) and isinstance(msr, SharedConvClassifier)
    assert maml(x).shape == msr(x).shape == (15, 5)

    fast, meta = split_parameters(maml)
    assert not meta and len(fast) == 6
    fast, meta = split_parameters(msr)
    assert sorted(fast) == ["convs.0.v", "convs.1.v", "convs.2.v", "head.bias", "head.weight"]
    assert sorted(meta) == ["conv_bias", "convs.0.U", "convs.1.U", "convs.2.U"]
    assert [c.U.shape for c in msr.convs] == [(144, 18), (2304, 288), (2304, 288)]
    with pytest.raises(MetasymError, match="model 'fewshot_msr_conv' does not fit task 'conv1d'"):
        build_model("fewshot_msr_conv", tasks.make_family("conv1d", n_in=10))
    with pytest.raises(MetasymError, match="expects inputs with 64 features"):
        msr(torch.zeros(2, 63))


def test_zero_padded_shared_conv_is_a_same_convolution_of_reshape_u_v():
    torch.manual_seed(0)
    conv = ZeroPadSharedConv2d(4, 8, 3, latent=72)
    x = torch.randn(3, 4, 6, 6)
    kernel = (conv.scale * conv.U @ conv.v).view(8, 4, 3, 3)
    ref = torch.nn.functional.conv2d(x, kernel, padding=1)
    assert torch.allclose(conv(x), ref, atol=1e-6)
    assert 0.7 < conv.kernel().var().item() * 36 / 2 < 1.4  # He scale: var ~ 2 / fan_in


def test_invariance_error_is_zero_for_invariant_features_only(gen):
    perms = d4_pixel_permutations()
    x = torch.randn(6, 64, generator=gen)

    class Pooled(torch.nn.Module):
        def features(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([x.sum(-1), x.pow(2).sum(-1)], -1)

    assert invariance_error(Pooled(), x, perms) < 1e-6
    torch.manual_seed(0)
    assert invariance_error(ConvClassifier((1, 8, 8), 5), x, perms) > 0.05


@pytest.mark.parametrize("name", ["fewshot_maml_conv", "fewshot_msr_conv"])
def test_one_meta_step_reduces_nothing_to_nan_and_reports_accuracy(family, name):
    cfg = MetaConfig(
        outer_steps=2,
        tasks_per_step=4,
        loss="cross_entropy",
        n_support=family.n_support,
        n_query=family.n_query,
        eval_tasks=8,
    )
    torch.manual_seed(0)
    learner = MetaLearner(build_model(name, family, channels=8), family, cfg)
    learner.fit()
    result = learner.evaluate()
    assert result.accuracy is not None and 0.0 <= result.accuracy <= 1.0


@pytest.mark.slow
def test_msr_conv_beats_maml_conv_on_transformed_queries():
    """5-way 1-shot, 100 outer steps each: MSR-conv's accuracy clears MAML-conv's interval."""
    family = AugDigitsTasks(n_way=5, k_shot=1, n_query_per_class=10)
    cfg = MetaConfig(
        outer_steps=100,
        tasks_per_step=16,
        outer_lr=3e-3,
        inner_lr=0.5,
        loss="cross_entropy",
        n_support=family.n_support,
        n_query=family.n_query,
        eval_tasks=100,
    )
    acc = {}
    for name in ("fewshot_maml_conv", "fewshot_msr_conv"):
        torch.manual_seed(cfg.seed)
        learner = MetaLearner(build_model(name, family), family, cfg)
        learner.fit()
        acc[name] = learner.evaluate()
    maml, msr = acc["fewshot_maml_conv"], acc["fewshot_msr_conv"]
    assert msr.accuracy - msr.accuracy_ci95 > maml.accuracy + maml.accuracy_ci95
    assert msr.accuracy > 0.2 + 0.1  # chance is 1/5
