"""Token windows: the GPTQ evaluation cut and its errors."""

import pytest
import torch

from sparsa.data.tokens import eval_windows, tokenize
from sparsa.errors import SparsaError


def test_eval_windows_cut_non_overlapping_from_start():
    ids = torch.arange(23)
    windows = eval_windows(ids, 5)
    assert windows.shape == (4, 5) and torch.equal(windows.reshape(-1), torch.arange(20))
    assert torch.equal(eval_windows(ids, 5, 2), torch.arange(10).view(2, 5))
    assert eval_windows(ids, 5, 99).shape == (4, 5)


@pytest.mark.parametrize("seqlen, windows, message", [
    (30, None, "text: 23 tokens, fewer than one window of --seqlen 30"),
    (1, None, "--seqlen 1 must be at least 2"),
    (5, 0, "--windows 0 must be at least 1"),
])
def test_eval_windows_bad_arguments_raise(seqlen, windows, message):
    with pytest.raises(SparsaError, match=message):
        eval_windows(torch.arange(23), seqlen, windows)


def test_tokenize_adds_no_special_tokens(tiny_tokenizer):
    assert tokenize(tiny_tokenizer, "w0 w5 w9").tolist() == [2, 7, 11]
