"""bench gpu: the skip without CUDA; the checking, table and files on tiny shapes (the Triton
kernel under the interpreter on the CPU, compiled on a GPU; the timer injected: no GPU timing is
claimed here)."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.bench.gpu import DENSE, NO_CUDA, OURS, GpuSettings, run_gpu, two_four
from sparsa.bench.gpu_decode import VARIANTS, DecodeShape, run_decode_variants
from sparsa.cli import main
from sparsa.formats import SpQR
from sparsa.kernels.triton.block_sparse import block_sparse_linear_triton
from sparsa.kernels.triton.spqr import spqr_linear_triton

# the decode's workload is the least that still exercises it (the Triton interpreter takes most of a
# minute per round): one timed token after the warm-up, two rounds so the median combines rounds
TINY = GpuSettings(shapes=((64, 96),), tokens=(1, 17), sparsities=(0.5,), block=16,
                   decode=DecodeShape(hidden=64, ffn=128, heads=4, layers=2, new_tokens=1), decode_rounds=2)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # compiled kernels take CUDA tensors only


def triton_kernels(x, fmt):
    """The Triton kernel of each format, called directly (the dispatch files them for CUDA only)."""
    return (spqr_linear_triton if isinstance(fmt, SpQR) else block_sparse_linear_triton)(x, fmt)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the skip is for machines without CUDA")
def test_bench_gpu_without_cuda_exits_0_with_a_skip_message_and_writes_nothing(tmp_path, capsys):
    assert main(["bench", "gpu", "--json", "--out", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out) == {"skipped": NO_CUDA}
    assert not list(tmp_path.iterdir())


def test_run_gpu_tiny_cases_check_every_peer_and_write_results(tmp_path):
    calls = []

    def count_calls(fn):  # stands in for CUDA-event timing on the CPU
        fn()
        calls.append(fn)
        return float(len(calls))

    payload = run_gpu(TINY, out_dir=tmp_path, name="gpu", device=DEVICE, timer=count_calls, apply=triton_kernels,
                      progress=False)
    assert {p.name for p in tmp_path.iterdir()} == {"gpu.json", "gpu.md", "gpu.png"}
    assert [(c["tokens"], c["sparsity"]) for c in payload["cases"]] == [(1, 0.5), (17, 0.5)]
    for case in payload["cases"]:
        assert {DENSE, OURS} <= set(case["ms"])
        assert set(case["ms"]) | set(case["skipped"]) == {DENSE, OURS, "torch BSR 16x16", "torch 2:4 (50%)"}
        assert case["rel_error"][OURS] < 1e-2
    assert len(calls) == sum(len(c["ms"]) for c in payload["cases"])
    md = (tmp_path / "gpu.md").read_text()
    assert f"| 64x96 | 17 | 50% | " in md and OURS in md
    assert [r["variant"] for r in payload["decode"]] == list(VARIANTS)  # each checked against its dense twin
    assert all(r["tokens_per_s"] > 0 and r["rel_error"] < 1e-2 for r in payload["decode"])
    assert all(len(r["tokens_per_s_rounds"]) == TINY.decode_rounds for r in payload["decode"])  # round-robin
    assert all(r["tokens_per_s"] == sum(r["tokens_per_s_rounds"]) / 2 for r in payload["decode"])  # their median
    assert "| SpQR 3-bit | " in md
    assert json.loads((tmp_path / "gpu.json").read_text())["settings"]["block"] == 16


def test_decode_refuses_a_variant_whose_projections_are_off():
    with pytest.raises(AssertionError, match="SpQR 3-bit differs from its dense twin"):
        run_decode_variants(TINY.decode, DEVICE, variants=("SpQR 3-bit",),
                            apply=lambda x, f: triton_kernels(x, f) * 1.05)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**16))
def test_two_four_keeps_the_two_largest_of_every_four(rows, quads, seed):
    W = torch.randn(rows, 4 * quads, generator=torch.Generator().manual_seed(seed))
    pruned = two_four(W).reshape(rows, quads, 4)
    groups = W.reshape(rows, quads, 4)
    assert ((pruned != 0).sum(-1) == 2).all()
    top2 = groups.abs().topk(2, dim=-1).values.sort(-1).values
    assert torch.equal(pruned.abs().sort(-1).values[..., 2:], top2)
