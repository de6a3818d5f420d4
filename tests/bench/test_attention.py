"""bench attention: the skip without CUDA; the planted inputs and one row on tiny shapes (the
Triton kernels under the interpreter on the CPU, compiled on a GPU; the timer injected: no GPU
timing is claimed here)."""

import os

import pytest
import torch

from sparsa.attention.config import AnchorConfig
from sparsa.bench.attention import (HEAVY, NO_CUDA, AttentionBenchSettings, markdown, planted_qkv,
                                    run_attention_bench, run_length)
from sparsa.kernels.triton.anchor import anchor_attention_triton

needs_triton = pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                                  reason="needs a CUDA device or TRITON_INTERPRET=1")

TINY = AttentionBenchSettings(seqlens=(200,), q_heads=4, kv_heads=2, head_dim=16, heavy=0.1,
                              config=AnchorConfig(theta=7.0, block_m=16, step=2, init=16, window=0), dtype="float32")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # compiled kernels take CUDA tensors only


@pytest.mark.skipif(torch.cuda.is_available(), reason="the skip is for machines without CUDA")
def test_run_attention_bench_without_cuda_skips_and_writes_nothing(tmp_path):
    assert run_attention_bench(TINY, out_dir=tmp_path) == {"skipped": NO_CUDA}
    assert not any(tmp_path.iterdir())


@needs_triton
@pytest.mark.parametrize("identify", ["rows", "pooled"])
def test_planted_qkv_stripes_are_exactly_the_heavy_keys(identify):
    q, k, v = planted_qkv(200, TINY, DEVICE)
    regions = TINY.config.regions
    heavy = (k[0, :, :, 0].cpu() > HEAVY / 2) & (torch.arange(200) >= regions.init)  # [Hkv, N]
    _, _, index, _ = anchor_attention_triton(q, k, v, regions, TINY.config.theta, 16 ** -0.5, identify)
    expect = heavy.repeat_interleave(2, 0)[None, :, None, :] & regions.stripe_candidates(200)  # [1, Hq, groups, N]
    assert index.nnz > 0 and torch.equal(index.to_mask(200).cpu(), expect)


@needs_triton
def test_run_length_reports_every_time_and_the_density():
    row = run_length(200, TINY, DEVICE, timer=lambda fn: (fn(), 2.0)[1])
    assert row["sdpa_ms"] == row["anchor_ms"] == 2.0 and row["speedup"] == 1.0
    assert 0 < row["density"] < 1 and (row["anchor_peak_gib"] is None) == (DEVICE == "cpu")
    text = markdown({"machine": {"date": "d", "device": "cpu", "torch": "t"},
                     "settings": {"q_heads": 4, "kv_heads": 2, "head_dim": 16, "dtype": "float32", "heavy": 0.1,
                                  "config": {"identify": "rows", "theta": 7.0}},
                     "rows": [row]})
    assert "| 200 | 2.00 | 2.00 | 1.00x |" in text
