"""Text -> token ids -> fixed-length windows, with the tokenizer's BOS token where the protocol asks.

BOS protocols (``--bos``), for ``ids`` tokenized without special tokens:

* ``auto`` (the default): every window opens with BOS, then ``seqlen - 1`` text tokens
  (llama.cpp's ``llama-perplexity`` does the same per chunk).
* ``once``: BOS before the whole text only, then windows of ``seqlen`` tokens are cut from that
  stream (the GPTQ papers' protocol, which tokenizes the whole text with the tokenizer's defaults).
* ``never``: windows of ``seqlen`` text tokens, no BOS anywhere.

``auto`` and ``once`` add the BOS the tokenizer adds by default (:func:`default_bos_id`); with a
tokenizer that adds none, they are ``never``.
"""

from dataclasses import dataclass

import torch

from sparsa.errors import SparsaError

BOS_PROTOCOLS = ("auto", "once", "never")
BOS_PROBE = "hello"  # any short text: only where the tokenizer puts its specials matters


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """[N] int64 token ids of ``text`` with no special tokens added."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def default_bos_id(tokenizer) -> int | None:
    """The BOS id ``tokenizer`` puts first when asked for its default special tokens, else None."""
    bos = tokenizer.bos_token_id
    with_specials = tokenizer(BOS_PROBE, add_special_tokens=True)["input_ids"]
    without = tokenizer(BOS_PROBE, add_special_tokens=False)["input_ids"]
    return bos if bos is not None and with_specials[:1] == [bos] and without[:1] != [bos] else None


@dataclass(frozen=True)
class Bos:
    """Where windows carry a BOS token.

    Attributes:
        protocol: ``auto``, ``once`` or ``never`` (see the module docstring).
        token_id: the BOS id added; None when none is (``never``, or a tokenizer without a default BOS).
    """

    protocol: str = "never"
    token_id: int | None = None

    def __post_init__(self):
        if self.protocol not in BOS_PROTOCOLS:
            raise SparsaError(f"--bos {self.protocol!r}: unknown protocol; choose from {', '.join(BOS_PROTOCOLS)}")
        if self.protocol == "never" and self.token_id is not None:
            raise SparsaError(f"--bos never adds no BOS token, yet token_id={self.token_id} was given")

    @property
    def per_window(self) -> bool:
        """Every window opens with BOS (``auto`` with a tokenizer that adds one)."""
        return self.protocol == "auto" and self.token_id is not None

    @property
    def once(self) -> bool:
        """BOS opens the whole text only."""
        return self.protocol == "once" and self.token_id is not None

    def to_dict(self) -> dict:
        """``{"protocol", "added", "token_id"}`` as results files record it."""
        return {"protocol": self.protocol, "added": self.token_id is not None, "token_id": self.token_id}


NO_BOS = Bos()


def bos_for(tokenizer, protocol: str) -> Bos:
    """The ``--bos`` ``protocol`` for ``tokenizer``: its default BOS id, unless the protocol is ``never``."""
    return Bos(protocol, None if protocol == "never" else default_bos_id(tokenizer))


def bos_stream(ids: torch.Tensor, seqlen: int, bos: Bos) -> tuple[torch.Tensor, int]:
    """(the [N'] stream windows are cut from, text tokens per window): ``ids`` with BOS in front
    (``once``), or ``ids`` with room left for the BOS each window opens with (``auto``)."""
    if bos.once:
        return torch.cat([ids.new_full((1,), bos.token_id), ids]), seqlen
    return ids, seqlen - 1 if bos.per_window else seqlen


def open_with_bos(windows: torch.Tensor, bos: Bos) -> torch.Tensor:
    """[W, w] -> [W, w + 1] with BOS in column 0 when every window opens with it; else unchanged."""
    if not bos.per_window:
        return windows
    return torch.cat([windows.new_full((windows.shape[0], 1), bos.token_id), windows], dim=1)


def eval_windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None, *, bos: Bos = NO_BOS,
                 source: str = "text"):
    """Non-overlapping windows from the start of the token stream (the GPTQ evaluation protocol).

    Args:
        ids: [N] text token ids, no special tokens.
        seqlen: tokens per window, BOS included.
        max_windows: keep at most this many windows (None: all that fit).
        bos: where BOS goes (default: nowhere); under ``auto`` each window holds ``seqlen - 1`` text tokens.
        source: names the text in errors.
    Returns:
        [W, seqlen] int64.
    """
    if seqlen < 2:
        raise SparsaError(f"--seqlen {seqlen} must be at least 2")
    if max_windows is not None and max_windows < 1:
        raise SparsaError(f"--windows {max_windows} must be at least 1")
    stream, width = bos_stream(ids, seqlen, bos)
    count = stream.numel() // width
    if count == 0:
        room = f" ({width} text tokens after BOS)" if bos.per_window else ""
        raise SparsaError(f"{source}: {ids.numel()} tokens, fewer than one window of --seqlen {seqlen}{room}")
    if max_windows is not None:
        count = min(count, max_windows)
    return open_with_bos(stream[: count * width].view(count, width), bos)  # [W, width] -> [W, seqlen]


def calibration_windows(ids: torch.Tensor, nsamples: int, seqlen: int, seed: int, *, bos: Bos = NO_BOS,
                        source: str = "text"):
    """``nsamples`` distinct non-overlapping windows drawn at random (seeded) from the token stream.

    Args:
        ids: [N] text token ids of a calibration split, no special tokens.
        nsamples, seqlen: window count and length (BOS included).
        seed: the draw is a function of (the slot count, nsamples, seed) only.
        bos: where BOS goes (default: nowhere); under ``auto`` each window holds ``seqlen - 1`` text tokens.
    Returns:
        [nsamples, seqlen] int64, in stream order.
    """
    if seqlen < 2:
        raise SparsaError(f"--seqlen {seqlen} must be at least 2")
    stream, width = bos_stream(ids, seqlen, bos)
    slots = stream.numel() // width
    if slots < nsamples:
        raise SparsaError(f"{source}: {ids.numel()} calibration tokens hold {slots} windows of --seqlen {seqlen}, "
                          f"fewer than --nsamples {nsamples}")
    pick = torch.randperm(slots, generator=torch.Generator().manual_seed(seed))[:nsamples].sort().values
    return open_with_bos(stream[: slots * width].view(slots, width)[pick], bos)  # [nsamples, seqlen]
