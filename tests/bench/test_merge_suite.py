"""Digits domains and the merge suite: deterministic data, model shapes, bit-identical builds, the cache."""

import numpy as np
import pytest
import torch

from sparsa.nn import digits_suite as merge_suite
from sparsa.nn.digits_suite import Suite, SuiteSettings, accuracy, build_suite, cache_path, features
from sparsa.nn.digits_vit import DigitsViT
from sparsa.data.digits_tasks import DOMAINS, SPLITS, digits_domain, split_indices
from sparsa.errors import SparsaError

TINY = SuiteSettings(domains=("identity", "rot90"), dim=16, depth=1, pretrain_steps=4, finetune_steps=3,
                     batch_size=32)


@pytest.fixture(scope="module")
def tiny_suite() -> Suite:
    return build_suite(TINY)


def test_digits_domain_repeated_calls_equal():
    for domain in DOMAINS:
        x1, y1 = digits_domain(domain, "val")
        x2, y2 = digits_domain(domain, "val")
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_digits_domain_shapes_dtypes_range_float32_int64_unit():
    for domain in DOMAINS:
        x, y = digits_domain(domain, "train")
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(y), 8, 8) and 0.0 <= x.min() and x.max() <= 1.0
        assert set(y.tolist()) == set(range(10))


def test_digits_domain_transforms_of_identity_match_domains():
    for split in SPLITS:
        x, y = digits_domain("identity", split)
        assert torch.equal(digits_domain("rot90", split)[0], torch.rot90(x, 1, dims=(1, 2)))
        assert torch.equal(digits_domain("rot180", split)[0], torch.rot90(x, 2, dims=(1, 2)))
        assert torch.equal(digits_domain("flip", split)[0], torch.flip(x, dims=(2,)))
        assert torch.equal(digits_domain("invert", split)[0], 1.0 - x)
        assert torch.equal(digits_domain("shift", split)[0][:, 1:, 1:], x[:, :-1, :-1])
        for domain in DOMAINS:
            assert torch.equal(digits_domain(domain, split)[1], y)


def test_digits_domain_noise_differs_by_split_and_is_bounded():
    x, _ = digits_domain("identity", "test")
    noisy, _ = digits_domain("noise", "test")
    diff = noisy - x
    assert not torch.equal(noisy, x) and 0.1 < diff.abs().mean() < 0.25
    val_noise = digits_domain("noise", "val")[0] - digits_domain("identity", "val")[0]
    assert not torch.equal(val_noise[:10], diff[:10])


def test_digits_domain_all_domains_pairwise_differ():
    xs = {d: digits_domain(d, "test")[0] for d in DOMAINS}
    for i, a in enumerate(DOMAINS):
        for b in DOMAINS[i + 1:]:
            assert not torch.equal(xs[a], xs[b]), (a, b)


def test_split_indices_disjoint_cover_and_stratified():
    parts = [split_indices(s) for s in SPLITS]
    joined = np.concatenate(parts)
    assert len(joined) == 1797 and len(np.unique(joined)) == 1797
    assert [len(p) for p in parts] == [1078, 269, 450]
    counts = np.bincount(digits_domain("identity", "test")[1].numpy(), minlength=10)
    assert counts.min() >= 43 and counts.max() <= 47


def test_digits_domain_bad_domain_raises_naming_known():
    with pytest.raises(SparsaError, match=r"unknown digits domain 'mnist'; known: identity, rot90"):
        digits_domain("mnist", "train")


def test_digits_domain_bad_split_raises_naming_known():
    with pytest.raises(SparsaError, match=r"unknown digits split 'dev'; known: train, val, test"):
        digits_domain("identity", "dev")


def test_digitsvit_forward_and_features_shapes():
    model = DigitsViT()
    x = torch.rand(5, 8, 8)
    assert model(x).shape == (5, 10) and model.features(x).shape == (5, 64)
    assert 50_000 <= sum(p.numel() for p in model.parameters()) <= 100_000


def test_suite_settings_bad_domain_or_heads_raise():
    with pytest.raises(SparsaError, match="bad domains"):
        SuiteSettings(domains=("identity", "mnist"))
    with pytest.raises(SparsaError, match="not a multiple of heads"):
        SuiteSettings(dim=18)


def test_suite_settings_key_depends_on_settings():
    assert SuiteSettings().key() == SuiteSettings().key() != SuiteSettings.quick().key()
    assert len(SuiteSettings().key()) == 16


def test_build_suite_tiny_twice_bit_identical(tiny_suite):
    again = build_suite(TINY)
    assert tiny_suite.base.keys() == again.base.keys()
    assert all(torch.equal(v, again.base[k]) for k, v in tiny_suite.base.items())
    for domain in TINY.domains:
        assert all(torch.equal(v, again.finetuned[domain][k]) for k, v in tiny_suite.finetuned[domain].items())
    assert tiny_suite.finetuned_accuracy == again.finetuned_accuracy
    assert tiny_suite.base_accuracy == again.base_accuracy


def test_build_suite_tiny_finetuned_differs_from_base_and_accuracy_matches(tiny_suite):
    assert set(tiny_suite.finetuned) == {"identity", "rot90"}
    vectors = tiny_suite.task_vectors()
    assert all(any(v.abs().max() > 0 for v in tv.values()) for tv in vectors.values())
    x, y = digits_domain("rot90", "test")
    assert accuracy(tiny_suite.finetuned["rot90"], x, y, TINY) == tiny_suite.finetuned_accuracy["rot90"]
    assert features(tiny_suite.base, x[:7], TINY).shape == (7, 16)


def test_build_suite_cache_round_trips_without_training(tiny_suite, tmp_path, monkeypatch):
    first = build_suite(TINY, cache_dir=tmp_path)
    path = cache_path(TINY, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name] and path.suffix == ".safetensors"

    def no_training(*args, **kwargs):
        raise AssertionError("trained although cached")

    monkeypatch.setattr(merge_suite, "_train", no_training)
    loaded = build_suite(TINY, cache_dir=tmp_path)
    for domain in TINY.domains:
        assert all(torch.equal(v, loaded.finetuned[domain][k]) for k, v in tiny_suite.finetuned[domain].items())
    assert all(torch.equal(v, loaded.base[k]) for k, v in first.base.items())
    assert loaded.finetuned_accuracy == first.finetuned_accuracy and loaded.settings == TINY
    # the training order, not the file's sorted one: DARE draws its drops tensor by tensor in this order
    assert list(loaded.base) == list(first.base) == list(merge_suite.make_model(TINY).state_dict())
    assert all(list(loaded.finetuned[d]) == list(first.base) for d in TINY.domains)


def test_load_suite_other_settings_raises(tiny_suite, tmp_path):
    path = tmp_path / "suite.safetensors"
    merge_suite.save_suite(tiny_suite, path)
    with pytest.raises(SparsaError, match="built with other settings"):
        merge_suite.load_suite(path, SuiteSettings(domains=("identity", "rot90"), dim=16, depth=1))


def test_task_loss_same_batch_per_step_and_differentiable(tiny_suite):
    loss = merge_suite.task_loss(TINY, "rot90")
    weights = {n: t.clone().requires_grad_(True) for n, t in tiny_suite.finetuned["rot90"].items()}
    first = loss(weights, 3)
    assert torch.equal(first, loss(weights, 3)) and not torch.equal(first, loss(weights, 4))
    first.backward()
    assert weights["head.weight"].grad is not None and bool(weights["head.weight"].grad.abs().sum() > 0)
