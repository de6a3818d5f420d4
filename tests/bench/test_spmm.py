"""bench spmm: weights of exact block sparsity, every peer checked before timing, written results."""

import json

import pytest
import torch

from sparsa.bench import spmm
from sparsa.bench.spmm import SpmmSettings, block_weight, ratios, run_spmm

TINY = SpmmSettings(cases=((32, 48, 3), (32, 32, 9)), sparsities=(0.5, 0.75), rounds=1, min_seconds=0.0)


@pytest.mark.parametrize("block", [(1, 16), (16, 1), (16, 16)], ids=str)
@pytest.mark.parametrize("sparsity", [0.0, 0.7, 0.9, 1.0])
def test_block_weight_zeroes_exactly_that_share_of_blocks(block, sparsity):
    W = block_weight(64, 96, block, sparsity, torch.Generator().manual_seed(0))
    r, c = block
    tiles = W.reshape(64 // r, r, 96 // c, c).transpose(1, 2).flatten(2)
    blocks = tiles.shape[0] * tiles.shape[1]
    assert int((tiles == 0).all(-1).sum()) == round(sparsity * blocks)


def test_run_spmm_tiny_cases_time_every_peer_and_write_results(tmp_path):
    payload = run_spmm(TINY, out_dir=tmp_path, name="spmm", progress=False)
    assert {p.name for p in tmp_path.iterdir()} == {"spmm.json", "spmm.md", "spmm.png"}
    assert len(payload["cases"]) == 4
    for case in payload["cases"]:
        assert set(case["ms"]) | set(case["skipped"]) >= {"dense fp32", "torch CSR", "ours fp32 1x16", "ours fp32 16x1",
                                                          "scipy BSR 1x16", "torch ao sparse int8 1x4"}
        assert {"dense fp32", "ours fp32 1x16", "ours fp32 16x1"} <= set(case["ms"])
        assert all(t > 0 for t in case["ms"].values())
        assert all(e < 1e-4 for n, e in case["rel_error"].items() if "int8" not in n)
    assert "ours fp32 1x16 / dense fp32" in payload["ratios"][0]
    assert json.loads((tmp_path / "spmm.json").read_text())["machine"]["cores"] >= 1
    assert "| 32x48 | 3 | 50% |" in (tmp_path / "spmm.md").read_text()


def test_run_spmm_wrong_peer_output_stops_the_benchmark(tmp_path, monkeypatch):
    real = spmm.peers

    def with_wrong_peer(W, sparsity, g):
        found = real(W, sparsity, g)
        found["torch CSR"] = (W, lambda x: torch.zeros(x.shape[0], W.shape[0]))
        return found

    monkeypatch.setattr(spmm, "peers", with_wrong_peer)
    with pytest.raises(AssertionError, match="bench spmm: torch CSR is wrong on 32x48"):
        run_spmm(TINY, out_dir=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_ratios_divide_peer_time_by_ours():
    case = {"ms": {"dense fp32": 6.0, "torch CSR": 3.0, "ours fp32 1x16": 2.0}}
    assert ratios(case) == {"ours fp32 1x16 / dense fp32": 3.0, "ours fp32 1x16 / torch CSR": 1.5}
