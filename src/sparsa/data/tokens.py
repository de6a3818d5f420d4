"""Text -> token ids -> fixed-length windows."""

import torch

from sparsa.errors import SparsaError


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """[N] int64 token ids of ``text`` with no special tokens added."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def eval_windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None, *, source: str = "text"):
    """Non-overlapping windows from the start of the token stream (the GPTQ evaluation protocol).

    Args:
        ids: [N] token ids.
        seqlen: tokens per window.
        max_windows: keep at most this many windows (None: all ``N // seqlen``).
        source: names the text in errors.
    Returns:
        [W, seqlen] int64.
    """
    if seqlen < 2:
        raise SparsaError(f"--seqlen {seqlen} must be at least 2")
    if max_windows is not None and max_windows < 1:
        raise SparsaError(f"--windows {max_windows} must be at least 1")
    count = ids.numel() // seqlen
    if count == 0:
        raise SparsaError(f"{source}: {ids.numel()} tokens, fewer than one window of --seqlen {seqlen}")
    if max_windows is not None:
        count = min(count, max_windows)
    return ids[: count * seqlen].view(count, seqlen)


def calibration_windows(ids: torch.Tensor, nsamples: int, seqlen: int, seed: int, *, source: str = "text"):
    """``nsamples`` distinct non-overlapping windows drawn at random (seeded) from the token stream.

    Args:
        ids: [N] token ids (a calibration split).
        nsamples, seqlen: window count and length.
        seed: the draw is a function of (N, nsamples, seqlen, seed) only.
    Returns:
        [nsamples, seqlen] int64, in stream order.
    """
    slots = ids.numel() // seqlen
    if slots < nsamples:
        raise SparsaError(f"{source}: {ids.numel()} calibration tokens hold {slots} windows of --seqlen {seqlen}, "
                          f"fewer than --nsamples {nsamples}")
    pick = torch.randperm(slots, generator=torch.Generator().manual_seed(seed))[:nsamples].sort().values
    return ids[: slots * seqlen].view(slots, seqlen)[pick]
