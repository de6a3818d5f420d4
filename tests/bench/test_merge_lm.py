"""bench merge's language tasks on a tiny random Llama: capture, fine-tuning, the cache, every method."""

import math

import pytest
import torch

from sparsa.bench import merge_lm
from sparsa.bench.merge import MergeBenchSettings, run_family
from sparsa.bench.merge_lm import LMSuiteSettings, LMTasks
from sparsa.errors import SparsaError
from sparsa.merge.config import FlexSwitchConfig, RouterConfig


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[EOS]": 1, **{w: i + 2 for i, w in enumerate(
        "the of and to a in is that it was for on as with his be by he at i you not".split())}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         tie_word_embeddings=True)).eval()
    path = tmp_path_factory.mktemp("lm") / "tiny"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def settings(tiny_dir):
    return LMSuiteSettings(model=str(tiny_dir), tuned_layers=1, seqlen=16, train_windows=24, test_windows=6,
                           steps=30, batch_size=4, lr=3e-3)


@pytest.fixture(scope="module")
def family(settings, tmp_path_factory):
    return LMTasks(settings, cache_dir=tmp_path_factory.mktemp("cache"))


def test_lm_tasks_tune_only_the_top_block(family):
    assert family.tasks == ["wiki", "shakespeare"]
    assert family.base and all(k.startswith("model.layers.1.") for k in family.base)
    assert family.params == sum(t.numel() for t in family.base.values())
    hidden, ids = family.train["wiki"]
    assert hidden.shape == (24, 16, 32) and ids.shape == (24, 16)
    assert family.test["shakespeare"][1].shape == (6, 16)


def test_lm_tasks_fine_tuning_lowers_own_test_perplexity(family):
    for task in family.tasks:
        def ppl(state):
            total = count = 0
            for h, ids in family.test_batches(task, 4):
                t, c = family.evaluate(state, h, ids)
                total, count = total + t, count + c
            return family.summarize(total, count)
        assert ppl(family.finetuned[task]) < ppl(family.base)
        assert family.normalize(10.0, 5.0) == 0.5


def test_lm_tasks_loss_same_batch_per_step_and_features_shapes(family):
    loss = family.loss("wiki")
    weights = {k: v.clone().requires_grad_(True) for k, v in family.base.items()}
    assert torch.equal(loss(weights, 2), loss(weights, 2))
    loss(weights, 2).backward()
    assert all(w.grad is not None for w in weights.values())
    x = family.query("wiki", 5)
    assert family.features("input", x).shape == (5, 32) and family.features("output", x).shape == (5, 32)


def test_lm_tasks_second_build_loads_the_cache_without_training(settings, tmp_path, monkeypatch):
    first = LMTasks(settings, cache_dir=tmp_path)
    monkeypatch.setattr(torch.optim, "AdamW", lambda *a, **k: pytest.fail("trained again"))
    again = LMTasks(settings, cache_dir=tmp_path)
    for task in first.tasks:
        for name, t in first.finetuned[task].items():
            assert torch.equal(again.finetuned[task][name], t)


def test_lm_settings_bad_values_raise(tiny_dir):
    with pytest.raises(SparsaError, match="need two or more of"):
        LMSuiteSettings(tasks=("wiki",))
    with pytest.raises(SparsaError, match="tuned_layers 2 must be fewer than the model's 2 blocks"):
        LMTasks(LMSuiteSettings(model=str(tiny_dir), tuned_layers=2, seqlen=16, train_windows=2, test_windows=1))


def test_run_family_scores_every_method_on_the_lm_tasks(family):
    s = MergeBenchSettings(router=RouterConfig(k=3, samples_per_task=10, rank=2, metric_steps=10), lm=None)
    rows = run_family(family, s, FlexSwitchConfig(budget_bits=2.0, steps=5), batch=3, progress=False)
    by = {r["method"]: r for r in rows}
    assert list(by)[:2] == ["pretrained", "individual"] and "auto_flexswitch" in by
    assert by["individual"]["mean_normalized"] == pytest.approx(1.0)
    for r in rows:
        assert set(r["perplexity"]) == {"wiki", "shakespeare"}
        assert all(math.isfinite(v) and v > 1 for v in r["perplexity"].values())
    assert by["flexswitch"]["bits_per_param"] <= 2.0
    assert merge_lm.LM_SUITE_VERSION >= 1
