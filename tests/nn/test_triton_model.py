"""A compressed tiny Llama in fp16 whose linears run the Triton kernels gives the reference path's
logits: compiled on a CUDA device, else under the interpreter on the CPU (``TRITON_INTERPRET=1``,
which tests/conftest.py sets where nvidia-smi is absent), the kernels filed for "cpu" there for
the test."""

import os

import pytest
import torch

from sparsa.compress import MagnitudeConfig, RTNConfig, SpQRConfig, compress_
from sparsa.kernels import dispatch
from sparsa.kernels.triton.block_sparse import block_sparse_linear_triton, takes
from sparsa.kernels.triton.nm import nm_linear_triton
from sparsa.kernels.triton.quant import quant_linear_triton
from sparsa.kernels.triton.spqr import spqr_linear_triton
from sparsa.nn import decoded_weights, sparse_linears

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="no CUDA device and TRITON_INTERPRET unset (nvidia-smi present?): "
                                       "the Triton kernels cannot run")
TRITON = {"block": (block_sparse_linear_triton, takes), "nm": (nm_linear_triton, None),
          "quant": (quant_linear_triton, None), "spqr": (spqr_linear_triton, None)}
CONFIGS = [RTNConfig(bits=3, group_size=32), MagnitudeConfig(pattern="2:4", sparsity=0.5),
           MagnitudeConfig(sparsity=0.5, pattern="block:16x16"), MagnitudeConfig(sparsity=0.5, pattern="block:1x16"),
           SpQRConfig(bits=3, stat_group_size=16, nsamples=4, seqlen=32)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.method + "-" + str(c.to_dict().get("pattern", "")))
def test_compressed_llama_on_triton_kernels_matches_reference_logits(tiny_llama, config, monkeypatch):
    windows = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    compress_(tiny_llama, config, calibration=windows if config.method == "spqr" else None, progress=False)
    model = tiny_llama.half().to(DEVICE)
    ids = windows[:2, :24].to(DEVICE)
    if DEVICE == "cpu":  # the interpreter: file the GPU kernels for fp16 activations on the CPU
        for name in {m.weight_format.format_name for _, m in sparse_linears(model)}:
            kernel, accepts = TRITON[name]
            monkeypatch.setitem(dispatch.LINEAR_KERNELS, (name, "cpu", torch.float16),
                                dispatch.Registered(kernel, accepts))
    with torch.inference_mode():
        with decoded_weights(model):  # the reference path: each weight decoded to fp16, F.linear
            reference = model(ids).logits.float()
        for _, m in sparse_linears(model):
            example = torch.zeros(1, m.weight_format.shape[1], dtype=torch.float16, device=DEVICE)
            assert dispatch.select_linear_kernel(m.weight_format, example) is TRITON[m.weight_format.format_name][0]
        logits = model(ids).logits.float()
    torch.testing.assert_close(logits, reference, rtol=2e-2, atol=2e-2)
