"""The same formats, kernels and perplexity on a CUDA device (skipped without one): a checkpoint's
formats move and decode there and its fp32 perplexity matches the CPU's; in fp16, the activation
dtype the Triton kernels are filed for, its linears run them and give the decoded-weight logits."""

import pytest
import torch

from sparsa.compress import MagnitudeConfig, RTNConfig, compress_
from sparsa.evaluate import perplexity
from sparsa.kernels import linear_reference, select_linear_kernel
from sparsa.kernels.triton.block_sparse import block_sparse_linear_triton
from sparsa.kernels.triton.nm import nm_linear_triton
from sparsa.kernels.triton.quant import quant_linear_triton
from sparsa.nn import decoded_weights, sparse_linears
from sparsa.nn.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONFIGS = [RTNConfig(bits=3, group_size=32), MagnitudeConfig(sparsity=0.6), MagnitudeConfig(pattern="2:4"),
           MagnitudeConfig(sparsity=0.5, pattern="block:16x16")]
# the kernel each format's fp16 CUDA product takes; Bitmap (unstructured) has no Triton kernel
FP16_KERNELS = {"quant": quant_linear_triton, "bitmap": linear_reference, "nm": nm_linear_triton,
                "block": block_sparse_linear_triton}


def checkpoint_model(tiny_llama, tiny_tokenizer, path, config):
    """The tiny Llama compressed with ``config``, saved to ``path`` and loaded back (fp32, CPU)."""
    compress_(tiny_llama, config, progress=False)
    save_checkpoint(tiny_llama, tiny_tokenizer, path, method=config.to_dict())
    model, _, _ = load_checkpoint(path)
    return model


def config_id(config) -> str:
    return config.method + "-" + str(config.to_dict().get("pattern", ""))


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_cuda_checkpoint_model_matches_cpu(tiny_llama, tiny_tokenizer, tmp_path, config):
    model = checkpoint_model(tiny_llama, tiny_tokenizer, tmp_path / "ck", config)
    windows = torch.randint(0, 128, (2, 64), generator=torch.Generator().manual_seed(0))
    cpu = perplexity(model, windows, progress=False).ppl
    model.to("cuda")
    for fqn, module in sparse_linears(model):
        dense = module.weight_format.to_dense()
        assert dense.is_cuda, fqn
        assert torch.equal(dense.cpu(), module.weight_format.to("cpu").to_dense()), fqn
    assert perplexity(model, windows, device="cuda", progress=False).ppl == pytest.approx(cpu, rel=1e-4)


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_cuda_fp16_checkpoint_model_runs_triton_kernels_like_decoded_weights(tiny_llama, tiny_tokenizer, tmp_path,
                                                                            config):
    model = checkpoint_model(tiny_llama, tiny_tokenizer, tmp_path / "ck", config).half().to("cuda")
    ids = torch.randint(0, 128, (2, 64), generator=torch.Generator().manual_seed(0)).to("cuda")
    with torch.inference_mode():
        for fqn, module in sparse_linears(model):
            example = torch.zeros(1, module.in_features, dtype=torch.float16, device="cuda")
            kernel = select_linear_kernel(module.weight_format, example)
            assert kernel is FP16_KERNELS[module.format_cls.format_name], fqn
        with decoded_weights(model):  # the reference path: each weight decoded to fp16, F.linear (cuBLAS)
            reference = model(ids).logits.float()
        logits = model(ids).logits.float()
    torch.testing.assert_close(logits, reference, rtol=2e-2, atol=2e-2)  # as tests/nn/test_triton_model.py
