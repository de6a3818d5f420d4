"""BOS in token windows: ``--bos auto`` opens every window with BOS, ``once`` opens the whole text
with it, ``never`` cuts text tokens only (the windows of before ``--bos``)."""

import pytest
import torch

from sparsa.data.tokens import Bos, bos_for, calibration_windows, default_bos_id, eval_windows, tokenize
from sparsa.errors import SparsaError
from conftest import word_text
from tiny_bos import BOS_ID, bos_tokenizer


@pytest.fixture(scope="module")
def bos_tok():
    return bos_tokenizer()


@pytest.fixture(scope="module")
def ids(bos_tok):
    """[400] text ids (2..122) of the tiny vocabulary, tokenized without special tokens."""
    return tokenize(bos_tok, word_text(400))


def test_default_bos_id_names_the_bos_a_tokenizer_adds_by_default(bos_tok, tiny_tokenizer):
    assert default_bos_id(bos_tok) == BOS_ID
    assert default_bos_id(tiny_tokenizer) is None  # no BOS token at all
    assert bos_for(bos_tok, "auto") == Bos("auto", BOS_ID) and bos_for(bos_tok, "never") == Bos("never", None)


def test_tokenize_never_adds_the_bos(bos_tok, ids):
    assert ids.numel() == 400 and BOS_ID not in ids.tolist()
    assert bos_tok(word_text(3))["input_ids"][0] == BOS_ID  # while the tokenizer's default adds it


def test_eval_windows_auto_opens_every_window_with_bos_then_seqlen_minus_1_text_tokens(bos_tok, ids):
    windows = eval_windows(ids, 20, bos=bos_for(bos_tok, "auto"))
    assert windows.shape == (400 // 19, 20) and windows.dtype == torch.long
    assert (windows[:, 0] == BOS_ID).all()
    assert torch.equal(windows[:, 1:].reshape(-1), ids[: 21 * 19])  # consecutive, non-overlapping text
    assert BOS_ID not in windows[:, 1:].tolist()  # every scored target (positions 1..19) is text
    assert torch.equal(eval_windows(ids, 20, 3, bos=bos_for(bos_tok, "auto")), windows[:3])


def test_eval_windows_once_puts_bos_before_the_whole_text_only(bos_tok, ids):
    windows = eval_windows(ids, 20, bos=bos_for(bos_tok, "once"))
    assert windows.shape == (401 // 20, 20)
    assert windows[0, 0] == BOS_ID and (windows == BOS_ID).sum() == 1
    assert torch.equal(windows.reshape(-1)[1:], ids[: 20 * 20 - 1])


def test_eval_windows_never_matches_the_windows_without_bos(bos_tok, ids):
    windows = eval_windows(ids, 20, bos=bos_for(bos_tok, "never"))
    assert torch.equal(windows, ids[:400].view(20, 20)) and torch.equal(windows, eval_windows(ids, 20))
    assert torch.equal(eval_windows(ids, 30, 4, bos=bos_for(bos_tok, "never")), ids[:120].view(4, 30))


@pytest.mark.parametrize("protocol", ["auto", "once"])
def test_windows_tokenizer_without_default_bos_are_the_never_windows(tiny_tokenizer, ids, protocol):
    bos = bos_for(tiny_tokenizer, protocol)
    assert bos.to_dict() == {"protocol": protocol, "added": False, "token_id": None}
    assert torch.equal(eval_windows(ids, 20, bos=bos), eval_windows(ids, 20, bos=bos_for(tiny_tokenizer, "never")))
    assert torch.equal(calibration_windows(ids, 5, 30, 0, bos=bos), calibration_windows(ids, 5, 30, 0))


def test_calibration_windows_auto_open_with_bos_each_a_distinct_text_slot(bos_tok, ids):
    windows = calibration_windows(ids, 6, 30, seed=0, bos=bos_for(bos_tok, "auto"))
    assert windows.shape == (6, 30) and (windows[:, 0] == BOS_ID).all()
    slots = ids[: 400 // 29 * 29].view(-1, 29)  # [13, 29] text slots
    picked = [next(i for i, s in enumerate(slots) if torch.equal(s, w)) for w in windows[:, 1:]]
    assert picked == sorted(set(picked))  # distinct, in stream order
    assert torch.equal(windows, calibration_windows(ids, 6, 30, seed=0, bos=bos_for(bos_tok, "auto")))


def test_calibration_windows_once_holds_one_bos_at_the_stream_start(bos_tok, ids):
    windows = calibration_windows(ids, 401 // 20, 20, seed=0, bos=bos_for(bos_tok, "once"))  # every slot
    assert windows[0, 0] == BOS_ID and (windows == BOS_ID).sum() == 1
    assert torch.equal(windows.reshape(-1)[1:], ids[:399])


def test_calibration_windows_never_match_the_windows_without_bos(bos_tok, ids):
    old = ids[:390].view(13, 30)[torch.randperm(13, generator=torch.Generator().manual_seed(4))[:5].sort().values]
    assert torch.equal(calibration_windows(ids, 5, 30, seed=4, bos=bos_for(bos_tok, "never")), old)


@pytest.mark.parametrize("call, message", [
    (lambda ids, b: eval_windows(ids[:18], 20, bos=b), "text: 18 tokens, fewer than one window of --seqlen 20 "
                                                        r"\(19 text tokens after BOS\)"),
    (lambda ids, b: calibration_windows(ids[:56], 3, 20, 0, bos=b, source="calib"),
     "calib: 56 calibration tokens hold 2 windows of --seqlen 20, fewer than --nsamples 3"),
])
def test_windows_auto_too_few_text_tokens_raise_naming_them(bos_tok, ids, call, message):
    with pytest.raises(SparsaError, match=message):
        call(ids, bos_for(bos_tok, "auto"))


def test_bos_unknown_protocol_or_never_with_a_token_raise(bos_tok):
    with pytest.raises(SparsaError, match="--bos 'always': unknown protocol; choose from auto, once, never"):
        bos_for(bos_tok, "always")
    with pytest.raises(SparsaError, match="--bos never adds no BOS token, yet token_id=123 was given"):
        Bos("never", BOS_ID)
