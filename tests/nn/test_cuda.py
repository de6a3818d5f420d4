"""The same formats, kernels and perplexity on a CUDA device (skipped without one)."""

import pytest
import torch

from sparsa.compress import MagnitudeConfig, RTNConfig, compress_
from sparsa.evaluate import perplexity
from sparsa.nn import sparse_linears
from sparsa.nn.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONFIGS = [RTNConfig(bits=3, group_size=32), MagnitudeConfig(sparsity=0.6), MagnitudeConfig(pattern="2:4"),
           MagnitudeConfig(sparsity=0.5, pattern="block:16x16")]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.method + "-" + str(c.to_dict().get("pattern", "")))
def test_cuda_checkpoint_model_matches_cpu(tiny_llama, tiny_tokenizer, tmp_path, config):
    compress_(tiny_llama, config, progress=False)
    save_checkpoint(tiny_llama, tiny_tokenizer, tmp_path / "ck", method=config.to_dict())
    model, _, _ = load_checkpoint(tmp_path / "ck")
    windows = torch.randint(0, 128, (2, 64), generator=torch.Generator().manual_seed(0))
    cpu = perplexity(model, windows, progress=False).ppl
    model.to("cuda")
    for fqn, module in sparse_linears(model):
        dense = module.weight_format.to_dense()
        assert dense.is_cuda, fqn
        assert torch.equal(dense.cpu(), module.weight_format.to("cpu").to_dense()), fqn
    assert perplexity(model, windows, device="cuda", progress=False).ppl == pytest.approx(cpu, rel=1e-4)
