"""A compressed tiny Llama in fp16 whose linears run the Triton kernels (under the interpreter on
the CPU: the kernels are filed for "cpu" here for the test) gives the reference path's logits."""

import os

import pytest
import torch

from sparsa.compress import MagnitudeConfig, RTNConfig, SpQRConfig, compress_
from sparsa.kernels import dispatch
from sparsa.kernels.triton.block_sparse import block_sparse_linear_triton, takes
from sparsa.kernels.triton.nm import nm_linear_triton
from sparsa.kernels.triton.quant import quant_linear_triton
from sparsa.kernels.triton.spqr import spqr_linear_triton
from sparsa.nn import sparse_linears

pytestmark = pytest.mark.skipif(torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
                                reason="the CPU filing of the Triton kernels needs TRITON_INTERPRET=1 and no GPU")
TRITON = {"block": (block_sparse_linear_triton, takes), "nm": (nm_linear_triton, None),
          "quant": (quant_linear_triton, None), "spqr": (spqr_linear_triton, None)}
CONFIGS = [RTNConfig(bits=3, group_size=32), MagnitudeConfig(pattern="2:4", sparsity=0.5),
           MagnitudeConfig(sparsity=0.5, pattern="block:16x16"), MagnitudeConfig(sparsity=0.5, pattern="block:1x16"),
           SpQRConfig(bits=3, stat_group_size=16, nsamples=4, seqlen=32)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.method + "-" + str(c.to_dict().get("pattern", "")))
def test_compressed_llama_on_triton_kernels_matches_reference_logits(tiny_llama, config, monkeypatch):
    windows = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    compress_(tiny_llama, config, calibration=windows if config.method == "spqr" else None, progress=False)
    model = tiny_llama.half()
    ids = windows[:2, :24]
    with torch.inference_mode():
        reference = model(ids).logits.float()  # fp16 on the CPU: no kernel filed, the reference path
        names = {m.weight_format.format_name for _, m in sparse_linears(model)}
        for name in names:
            kernel, accepts = TRITON[name]
            monkeypatch.setitem(dispatch.LINEAR_KERNELS, (name, "cpu", torch.float16),
                                dispatch.Registered(kernel, accepts))
        for _, m in sparse_linears(model):
            example = torch.zeros(1, m.weight_format.shape[1], dtype=torch.float16)
            assert dispatch.select_linear_kernel(m.weight_format, example) is TRITON[m.weight_format.format_name][0]
        logits = model(ids).logits.float()
    torch.testing.assert_close(logits, reference, rtol=2e-2, atol=2e-2)
