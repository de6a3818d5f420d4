"""Tests for sparsa.nn.sparse_linear.SparseLinear: buffers, forward, dtype/device moves."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsa.formats import NM, Bitmap, BlockSparse, Quant
from sparsa.kernels import linear_reference, select_linear_kernel
from sparsa.nn.sparse_linear import SparseLinear


def weight(dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 8, generator=g)
    W.view(6, 2, 4)[..., ::2] = 0
    return W.to(dtype)


BUILDERS = {
    "bitmap": lambda W: Bitmap.from_dense(W),
    "nm": lambda W: NM.from_dense(W, n=2, m=4),
    "block": lambda W: BlockSparse.from_dense(W, block=(1, 2)),
    "quant": lambda W: Quant.from_dense(W, bits=4, group_size=4),
}
ARRAYS = {"bitmap": ["mask", "values"], "nm": ["values", "index"], "block": ["crow", "col", "values"],
          "quant": ["codes", "scale", "minimum"]}


def make(name: str, with_bias: bool = True, dtype=torch.float32):
    fmt = BUILDERS[name](weight(dtype))
    bias = torch.randn(6, generator=torch.Generator().manual_seed(1)).to(dtype) if with_bias else None
    return fmt, bias, SparseLinear(fmt, bias)


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_sparse_linear_state_dict_keys_are_format_arrays(name, with_bias):
    fmt, _, module = make(name, with_bias)
    expected = ARRAYS[name] + (["bias"] if with_bias else [])
    assert sorted(module.state_dict()) == sorted(expected)
    assert [n for n, _ in module.named_buffers()] == ARRAYS[name]
    for array in ARRAYS[name]:
        assert torch.equal(module.state_dict()[array], getattr(fmt, array))


def test_sparse_linear_quant_state_dict_holds_codes_scale_minimum():
    fmt, bias, module = make("quant")
    state = module.state_dict()
    assert set(state) == {"codes", "scale", "minimum", "bias"}
    assert state["codes"].dtype == torch.uint8 and state["scale"].dtype == torch.float16
    assert torch.equal(state["bias"], bias)


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("x_shape", [(3, 8), (2, 4, 8)], ids=str)
def test_sparse_linear_forward_matches_dense_linear(name, x_shape):
    fmt, bias, module = make(name)
    x = torch.randn(*x_shape)
    y = module(x)
    assert y.shape == (*x_shape[:-1], 6)
    # formats with a CPU kernel sum in their own order: equal to fp32 rounding (each kernel's own
    # test bounds it against the exact product); the reference path is bit-identical to F.linear
    exact = select_linear_kernel(fmt, x) is linear_reference
    dense = nn.Linear(8, 6)
    with torch.no_grad():
        dense.weight.copy_(fmt.to_dense(torch.float32))
        dense.bias.copy_(bias)
    for expected in (F.linear(x, fmt.to_dense(torch.float32), bias), dense(x)):
        if exact:
            assert torch.equal(y, expected)
        else:
            torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["bitmap", "nm", "block"])
def test_sparse_linear_lossless_format_forward_equals_original_weight(name):
    fmt, bias, module = make(name)
    x = torch.randn(5, 8)
    expected = F.linear(x, weight(), bias)
    if select_linear_kernel(fmt, x) is linear_reference:
        assert torch.equal(module(x), expected)
    else:  # a CPU kernel: its own summation order
        torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)


def test_sparse_linear_without_bias_has_none_bias():
    """No bias: the module's output is its kernel's, bit for bit, and the dense product's to fp32 rounding."""
    fmt, _, module = make("nm", with_bias=False)
    assert module.bias is None
    x = torch.randn(2, 8)
    assert torch.equal(module(x), select_linear_kernel(fmt, x)(x, fmt))
    torch.testing.assert_close(module(x), F.linear(x, weight()), rtol=1e-6, atol=1e-6)


def test_sparse_linear_bias_is_frozen_parameter():
    _, bias, module = make("bitmap")
    assert isinstance(module.bias, nn.Parameter) and not module.bias.requires_grad
    assert torch.equal(module.bias, bias)


@pytest.mark.parametrize("name", BUILDERS)
def test_sparse_linear_weight_format_rebuilds_equal_format(name):
    fmt, _, module = make(name)
    rebuilt = module.weight_format
    assert type(rebuilt) is type(fmt) and rebuilt.meta() == fmt.meta()
    for array, value in fmt.arrays().items():
        assert torch.equal(getattr(rebuilt, array), value) and getattr(rebuilt, array).dtype == value.dtype
    assert torch.equal(rebuilt.to_dense(), fmt.to_dense())
    assert module.in_features == 8 and module.out_features == 6


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("convert, dtype", [
    (lambda m: m.to(torch.bfloat16), torch.bfloat16),
    (lambda m: m.half(), torch.float16),
    (lambda m: m.double(), torch.float64),
    (lambda m: m.to("cpu", torch.bfloat16), torch.bfloat16),
], ids=["to-bf16", "half", "double", "to-cpu-bf16"])
def test_sparse_linear_dtype_conversion_keeps_buffers_bit_exact_and_moves_bias(name, convert, dtype):
    fmt, bias, module = make(name)
    before = {k: v.clone() for k, v in fmt.arrays().items()}
    returned = convert(module)
    assert returned is module
    for array, value in before.items():
        buf = getattr(module, array)
        assert buf.dtype == value.dtype and torch.equal(buf, value)
    assert module.bias.dtype == dtype and torch.equal(module.bias, bias.to(dtype))
    assert torch.equal(module.weight_format.to_dense(), fmt.to_dense())


def test_sparse_linear_fp16_values_survive_float_conversion():
    fmt, _, module = make("bitmap", dtype=torch.float16)
    module.float()
    assert module.values.dtype == torch.float16 and torch.equal(module.values, fmt.values)
    assert module.bias.dtype == torch.float32


@pytest.mark.parametrize("name", BUILDERS)
def test_sparse_linear_bf16_module_forward_matches_bf16_reference(name):
    fmt, bias, module = make(name)
    module.to(torch.bfloat16)
    x = torch.randn(3, 8).to(torch.bfloat16)
    y = module(x)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, F.linear(x, fmt.to_dense(torch.bfloat16), bias.to(torch.bfloat16)))


def test_sparse_linear_inside_model_keeps_buffers_through_model_half():
    fmt, _, module = make("quant")
    model = nn.Sequential(module, nn.ReLU(), nn.Linear(6, 2))
    model.half()
    assert model[0].scale.dtype == torch.float16 and model[0].codes.dtype == torch.uint8
    assert torch.equal(model[0].codes, fmt.codes)
    assert model[2].weight.dtype == torch.float16


def test_sparse_linear_load_state_dict_replaces_buffers():
    _, _, module = make("quant")
    other = Quant.from_dense(weight() * 2, bits=4, group_size=4)
    other_module = SparseLinear(other, torch.zeros(6))
    module.load_state_dict(other_module.state_dict())
    assert torch.equal(module.weight_format.to_dense(), other.to_dense())
    assert torch.equal(module.bias, torch.zeros(6))


def test_sparse_linear_extra_repr_names_shape_and_format():
    _, _, module = make("block")
    assert module.extra_repr() == "in_features=8, out_features=6, format=block"


def test_decoded_weights_caches_inside_and_drops_on_exit():
    from sparsa.formats import Quant
    from sparsa.nn.sparse_linear import SparseLinear, decoded_weights

    module = SparseLinear(Quant.from_dense(torch.randn(8, 16), bits=4, group_size=8))
    x = torch.randn(3, 16)
    reference = F.linear(x, module.weight_format.to_dense())  # what the decoded path computes
    kernel = module(x)  # the CPU kernel: the same to fp32 rounding
    torch.testing.assert_close(kernel, reference, rtol=1e-5, atol=1e-5)
    with decoded_weights(torch.nn.Sequential(module)):
        assert torch.equal(module(x), reference) and module.decoded is not None
        cached = module.decoded
        module(x)
        assert module.decoded is cached
    assert module.decoded is None and not module.cache_decoded
    assert torch.equal(module(x), kernel)
