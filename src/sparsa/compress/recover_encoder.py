"""Gradual block pruning of a sentence encoder, distilling its own dense sentence embeddings.

The calibration items are sentences (tokenized with the special tokens, padded to the longest,
at most ``max_length`` tokens); the student and the dense teacher embed them the way the
encoder is used (:class:`~sparsa.nn.encoders.MeanPooled`: masked mean, L2 norm) and
:func:`~sparsa.compress.recover.recover_prune_` minimises ``1 - cos`` between the two. Every
linear but the pooler ends as a ``SparseLinear`` holding a ``BlockSparse`` weight.
"""

import copy

import torch
from torch import nn

from sparsa.compress.recover import RecoverConfig, RecoverSummary, recover_prune_
from sparsa.errors import SparsaError
from sparsa.nn.encoders import Encoder, MeanPooled, encoder_linears


def sentence_ids(encoder: Encoder, sentences: list[str], max_length: int) -> torch.Tensor:
    """[n, T] int64 token ids of ``sentences`` (special tokens added), right-padded with the pad id."""
    if not sentences:
        raise SparsaError("recovery needs calibration sentences; the calibration split holds none")
    if encoder.tokenizer.pad_token_id is None:
        raise SparsaError(f"{encoder.source}: the tokenizer has no pad token; recovery pads sentences")
    return encoder.tokenizer(sentences, padding=True, truncation=True, max_length=max_length,
                             return_tensors="pt")["input_ids"]


def recover_encoder_(encoder: Encoder, config: RecoverConfig, *, sentences: list[str],
                     teacher: nn.Module | None = None, max_length: int = 128,
                     progress: bool = True) -> RecoverSummary:
    """Prune ``encoder.model`` in place to ``config.sparsity`` in ``config.block`` blocks.

    Args:
        encoder: the dense encoder to prune (its model is trained, then its linears replaced).
        config: schedule, steps, learning rate, batch size.
        sentences: calibration sentences (never the held-out ones).
        teacher: the dense model whose embeddings are the targets; default: a copy of
            ``encoder.model`` taken before pruning.
        max_length: calibration sentences are truncated to this many tokens.
    """
    teacher = copy.deepcopy(encoder.model) if teacher is None else teacher
    ids = sentence_ids(encoder, sentences, max_length)
    pad_id = encoder.tokenizer.pad_token_id

    def embed_fn(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        mask = (batch != pad_id).long()  # [B, T]
        width = int(mask.sum(1).max())  # drop the columns that are padding in every row
        return MeanPooled(model)(batch[:, :width], mask[:, :width])

    return recover_prune_(encoder.model, teacher, ids, embed_fn, config, filter_fn=encoder_linears,
                          progress=progress)
