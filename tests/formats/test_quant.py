"""Tests for sparsa.formats.quant: b-bit min-max group quantization with fp16 scale and minimum."""

import json
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.errors import SparsaError
from sparsa.formats.bitpack import pack_bits
from sparsa.formats.quant import Quant, check_group_size, group_quantize, pad_groups

FAST = settings(max_examples=40, deadline=None)


def on_grid_weight(seed: int, out: int, groups: int, group_size: int, bits: int):
    """W = q * scale + minimum with fp16 scale/minimum and every group holding both 0 and 2**bits-1.

    Returns (W [out, groups*group_size] fp32, q [out, in] uint8, scale fp16, minimum fp16).
    """
    g = torch.Generator().manual_seed(seed)
    qmax = 2**bits - 1
    q = torch.randint(0, qmax + 1, (out, groups, group_size), generator=g)
    # force a 0 and a qmax at two distinct random positions of every group
    order = torch.rand(out, groups, group_size, generator=g).argsort(-1)
    q.scatter_(-1, order[..., :1], 0)
    q.scatter_(-1, order[..., 1:2], qmax)
    exponent = torch.randint(-8, 1, (out, groups), generator=g).float()
    scale = (torch.rand(out, groups, generator=g) + 1) * 2.0**exponent / 2  # [2^-9, 1)
    scale = scale.to(torch.float16)
    minimum = ((torch.rand(out, groups, generator=g) - 0.5) * 8).to(torch.float16)
    W = q.float() * scale.float()[..., None] + minimum.float()[..., None]
    return W.reshape(out, -1), q.to(torch.uint8).reshape(out, -1), scale, minimum


def random_weight(seed: int, out: int, inp: int, magnitude: float, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(out, inp, generator=g) * magnitude).to(dtype)


@st.composite
def grid_case(draw):
    bits = draw(st.integers(2, 8))
    group_size = draw(st.sampled_from([2, 3, 4, 8, 16]))
    groups = draw(st.integers(1, 4))
    out = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    return bits, group_size, groups, out, seed


@FAST
@given(grid_case())
def test_quant_from_dense_on_grid_weight_roundtrips_exactly(case):
    bits, group_size, groups, out, seed = case
    W, q, scale, minimum = on_grid_weight(seed, out, groups, group_size, bits)
    fmt = Quant.from_dense(W, bits=bits, group_size=group_size)
    assert torch.equal(fmt.scale, scale)
    assert torch.equal(fmt.minimum, minimum)
    assert torch.equal(fmt.unpacked_codes(), q)
    assert torch.equal(fmt.to_dense(), W)


@FAST
@given(grid_case(), st.sampled_from([torch.float16, torch.bfloat16]))
def test_quant_to_dense_requested_dtype_casts_fp32_decode(case, dtype):
    bits, group_size, groups, out, seed = case
    W, _, _, _ = on_grid_weight(seed, out, groups, group_size, bits)
    fmt = Quant.from_dense(W, bits=bits, group_size=group_size)
    dense = fmt.to_dense(dtype)
    assert dense.dtype == dtype
    assert torch.equal(dense, W.to(dtype))


@FAST
@given(st.integers(2, 8), st.sampled_from([1, 2, 4, 8, 16]), st.integers(1, 4), st.integers(1, 5),
       st.sampled_from([1e-3, 1.0, 30.0]), st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
       st.integers(0, 2**31 - 1))
def test_quant_from_dense_random_weight_error_within_half_step(bits, group_size, groups, out, magnitude,
                                                               dtype, seed):
    W = random_weight(seed, out, groups * group_size, magnitude, dtype)
    fmt = Quant.from_dense(W, bits=bits, group_size=group_size)
    qmax = 2**bits - 1
    Wg = W.float().view(out, groups, group_size)
    lo, hi = Wg.amin(-1), Wg.amax(-1)
    exact_scale = (hi - lo) / qmax
    scale, minimum = fmt.scale.float(), fmt.minimum.float()
    # half a step, plus what fp16 rounding of the scale and the minimum can add at the clamped ends
    tol = scale / 2 + (minimum - lo).abs() + qmax * (scale - exact_scale).abs() + 1e-6 * (1 + hi.abs().max())
    err = (fmt.to_dense().view(out, groups, group_size) - Wg).abs()
    assert bool((err <= tol[..., None]).all()), float((err - tol[..., None]).max())
    codes = fmt.unpacked_codes()
    assert int(codes.max()) <= qmax


@FAST
@given(grid_case(), st.booleans())
def test_quant_state_dict_roundtrip_is_bit_exact(case, via_json):
    bits, group_size, groups, out, seed = case
    W = random_weight(seed, out, groups * group_size, 1.0)
    fmt = Quant.from_dense(W, bits=bits, group_size=group_size)
    meta = fmt.meta()
    if via_json:
        meta = json.loads(json.dumps(meta))
    back = Quant.from_state_dict(fmt.to_state_dict(), meta, where="t.safetensors:w")
    assert back.meta() == fmt.meta()
    assert back.shape == fmt.shape and back.bits == bits and back.group_size == group_size
    for name, array in fmt.arrays().items():
        assert torch.equal(back.arrays()[name], array) and back.arrays()[name].dtype == array.dtype
    assert torch.equal(back.to_dense(), fmt.to_dense())


@FAST
@given(grid_case())
def test_quant_nbytes_any_shape_matches_codes_plus_fp16_scale_and_minimum(case):
    bits, group_size, groups, out, seed = case
    inp = groups * group_size
    fmt = Quant.from_dense(random_weight(seed, out, inp, 1.0), bits=bits, group_size=group_size)
    assert fmt.nbytes == math.ceil(out * inp * bits / 8) + 2 * 2 * out * (inp // group_size)
    assert fmt.nbytes == sum(t.numel() * t.element_size() for t in fmt.to_state_dict().values())


def test_quant_meta_lists_shape_bits_group_size_symmetric():
    fmt = Quant.from_dense(torch.randn(3, 8), bits=3, group_size=4)
    assert fmt.meta() == {"shape": [3, 8], "bits": 3, "group_size": 4, "symmetric": False}
    assert fmt.ARRAYS == ("codes", "scale", "minimum")
    assert fmt.codes.dtype == torch.uint8 and fmt.codes.shape == (9,)
    assert fmt.scale.shape == (3, 2) and fmt.minimum.shape == (3, 2)


def test_quant_nbytes_4bit_group128_is_4_25_bits_per_param():
    fmt = Quant.from_dense(torch.randn(4, 256), bits=4, group_size=128)
    assert fmt.nbytes == 512 + 2 * 2 * 4 * 2
    assert 8 * fmt.nbytes / fmt.numel == 4.25


def test_quant_constant_group_stores_zero_scale_and_decodes_to_minimum():
    W = torch.tensor([[0.5, 0.5, 0.5, 0.5, -1.0, 2.0, 0.0, 1.0]])
    fmt = Quant.from_dense(W, bits=2, group_size=4)
    assert fmt.scale[0, 0].item() == 0.0
    assert fmt.minimum[0, 0].item() == 0.5
    assert fmt.unpacked_codes()[0, :4].tolist() == [0, 0, 0, 0]
    assert torch.equal(fmt.to_dense()[0, :4], W[0, :4])
    assert fmt.scale[0, 1].item() == 1.0 and fmt.minimum[0, 1].item() == -1.0
    assert torch.equal(fmt.to_dense()[0, 4:], W[0, 4:])


def test_quant_group_size_one_fp16_weight_roundtrips_exactly():
    W = torch.randn(3, 5).to(torch.float16).float()
    fmt = Quant.from_dense(W, bits=2, group_size=1)
    assert bool((fmt.scale == 0).all())
    assert torch.equal(fmt.to_dense(), W)


def test_quant_all_zero_weight_decodes_to_zero():
    fmt = Quant.from_dense(torch.zeros(2, 8), bits=4, group_size=4)
    assert torch.equal(fmt.to_dense(), torch.zeros(2, 8))
    assert int(fmt.codes.sum()) == 0


def test_group_quantize_known_group_gives_known_codes():
    W = torch.tensor([[0.0, 1.0, 2.0, 3.0, 1.4, 0.6, 3.0, 0.0]])
    codes, scale, minimum = group_quantize(W, 2, 4)
    assert codes.tolist() == [[0, 1, 2, 3, 1, 1, 3, 0]]
    assert scale.tolist() == [[1.0, 1.0]] and minimum.tolist() == [[0.0, 0.0]]
    assert scale.dtype == torch.float16 and minimum.dtype == torch.float16


def test_quant_from_dense_noncontiguous_weight_matches_contiguous():
    W = torch.randn(8, 6)
    a = Quant.from_dense(W.t(), bits=4, group_size=4)
    b = Quant.from_dense(W.t().contiguous(), bits=4, group_size=4)
    for name in Quant.ARRAYS:
        assert torch.equal(getattr(a, name), getattr(b, name))


# -- validation -----------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [0, 1, 9, 16])
def test_quant_from_dense_bits_out_of_range_raises(bits):
    with pytest.raises(SparsaError, match=rf"^layer: --bits {bits} is outside 2\.\.8$"):
        Quant.from_dense(torch.randn(2, 8), bits=bits, group_size=4, where="layer")


@pytest.mark.parametrize("in_features, group_size, hint", [
    (48, 32, 16), (100, 8, 100), (192, 128, 64), (64, 128, 64), (96, 0, 32), (256, -4, 128),
])
def test_check_group_size_not_dividing_raises_with_group_size_hint(in_features, group_size, hint):
    message = (f"model.layers.0.q_proj: in_features={in_features} % group_size={group_size} != 0; "
               f"try --group-size {hint}")
    with pytest.raises(SparsaError, match=f"^{re.escape(message)}$"):
        check_group_size(in_features, group_size, "model.layers.0.q_proj")


def test_quant_from_dense_ragged_last_group_equals_its_own_quantization():
    W = torch.randn(3, 48)
    ragged = Quant.from_dense(W, bits=4, group_size=32)
    head = Quant.from_dense(W[:, :32], bits=4, group_size=32)
    tail = Quant.from_dense(W[:, 32:], bits=4, group_size=16)
    assert ragged.scale.shape == (3, 2) and ragged.nbytes == 3 * 48 * 4 // 8 + 2 * 2 * 3 * 2
    assert torch.equal(ragged.to_dense(), torch.cat([head.to_dense(), tail.to_dense()], dim=1))


def test_quant_from_dense_group_size_not_positive_raises():
    with pytest.raises(SparsaError, match=re.escape("w: --group-size 0 must be positive")):
        Quant.from_dense(torch.randn(2, 48), bits=4, group_size=0, where="w")


def good_quant():
    return Quant.from_dense(torch.randn(2, 8), bits=3, group_size=4)


def load(arrays, meta=None):
    return Quant.from_state_dict(arrays, meta if meta is not None else good_quant().meta(), where="f:w")


def test_quant_from_state_dict_codes_wrong_dtype_raises():
    arrays = good_quant().to_state_dict()
    arrays["codes"] = arrays["codes"].to(torch.int32)
    with pytest.raises(SparsaError, match=re.escape("f:w: codes has dtype torch.int32, expected one of [torch.uint8]")):
        load(arrays)


def test_quant_from_state_dict_codes_wrong_length_raises():
    arrays = good_quant().to_state_dict()
    arrays["codes"] = arrays["codes"][:-1]
    with pytest.raises(SparsaError, match=re.escape("f:w: codes has shape [5], expected [6]")):
        load(arrays)


@pytest.mark.parametrize("name", ["scale", "minimum"])
def test_quant_from_state_dict_scale_not_fp16_raises(name):
    arrays = good_quant().to_state_dict()
    arrays[name] = arrays[name].float()
    with pytest.raises(SparsaError, match=re.escape(f"f:w: {name} has dtype torch.float32")):
        load(arrays)


@pytest.mark.parametrize("name", ["scale", "minimum"])
def test_quant_from_state_dict_scale_wrong_shape_raises(name):
    arrays = good_quant().to_state_dict()
    arrays[name] = arrays[name].reshape(-1)
    with pytest.raises(SparsaError, match=re.escape(f"f:w: {name} has shape [4], expected [2, 2]")):
        load(arrays)


@pytest.mark.parametrize("name, bad", [("scale", float("inf")), ("minimum", float("nan"))])
def test_quant_from_state_dict_nonfinite_scale_raises(name, bad):
    arrays = good_quant().to_state_dict()
    arrays[name] = arrays[name].clone()
    arrays[name][1, 0] = bad
    with pytest.raises(SparsaError, match="f:w: scale or minimum holds inf/nan"):
        load(arrays)


@pytest.mark.parametrize("bits", [1, 9])
def test_quant_from_state_dict_bits_out_of_range_raises(bits):
    meta = {**good_quant().meta(), "bits": bits}
    with pytest.raises(SparsaError, match=re.escape(f"f:w: bits={bits} outside 2..8")):
        load(good_quant().to_state_dict(), meta)


def test_quant_from_state_dict_group_size_not_int_raises():
    meta = {**good_quant().meta(), "group_size": 4.0}
    with pytest.raises(SparsaError, match=re.escape("f:w: group_size=4.0 is not a positive integer")):
        load(good_quant().to_state_dict(), meta)


def test_quant_from_state_dict_group_size_disagreeing_with_scale_raises():
    meta = {**good_quant().meta(), "group_size": 3}  # ceil(8 / 3) = 3 groups, the arrays hold 2
    with pytest.raises(SparsaError, match=re.escape("f:w: scale has shape [2, 2], expected [2, 3]")):
        load(good_quant().to_state_dict(), meta)


@pytest.mark.parametrize("shape", [[0, 8], [2], [2, 8, 1], [-2, 8]])
def test_quant_from_state_dict_bad_shape_raises(shape):
    meta = {**good_quant().meta(), "shape": shape}
    with pytest.raises(SparsaError, match=r"f:w: shape .* is not two positive integers"):
        load(good_quant().to_state_dict(), meta)


def test_quant_from_state_dict_missing_array_raises():
    arrays = good_quant().to_state_dict()
    del arrays["minimum"]
    with pytest.raises(SparsaError, match=re.escape("f:w: missing arrays ['minimum']")):
        load(arrays)


def test_quant_from_state_dict_extra_array_raises():
    arrays = {**good_quant().to_state_dict(), "zero_point": torch.zeros(2, 2, dtype=torch.float16)}
    with pytest.raises(SparsaError, match=re.escape("f:w: unexpected arrays ['zero_point']")):
        load(arrays)


def test_quant_from_state_dict_wrong_meta_keys_raises():
    meta = {"shape": [2, 8], "bits": 3}
    with pytest.raises(SparsaError, match=re.escape(
            "f:w: quant metadata has keys ['bits', 'shape'], expected ['bits', 'group_size', 'shape', 'symmetric']")):
        load(good_quant().to_state_dict(), meta)


def test_quant_codes_pack_unpacked_codes_row_major():
    fmt = good_quant()
    assert torch.equal(pack_bits(fmt.unpacked_codes(), 3), fmt.codes)


def test_quant_from_dense_beyond_fp16_range_raises():
    with pytest.raises(SparsaError, match="big: weights beyond the fp16 range"):
        Quant.from_dense(torch.tensor([[-70000.0, 0.0, 1.0, 2.0]]), bits=4, group_size=4, where="big")


# -- symmetric grids (GGUF Q4_0's rule) --------------------------------------------------------
def test_symmetric_quant_known_group_gives_q4_0_codes():
    """The value of largest magnitude sets scale = value / -8 and gets code 0; the rest round to
    ``w / scale + 8``, clamped to 15 (Q4_0's grid, with the stored fp16 scale)."""
    fmt = Quant.from_dense(torch.tensor([[1.0, -2.0, 0.5, 4.0]]), bits=4, group_size=4, symmetric=True)
    assert fmt.symmetric and fmt.minimum is None and fmt.scale.tolist() == [[-0.5]]
    assert fmt.unpacked_codes().tolist() == [[6, 12, 7, 0]]
    assert fmt.to_dense().tolist() == [[1.0, -2.0, 0.5, 4.0]]
    assert fmt.meta()["symmetric"] is True and list(fmt.arrays()) == ["codes", "scale"]


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 8), st.sampled_from([4, 7, 32]), st.integers(1, 9), st.integers(1, 70), st.integers(0, 2**16))
def test_symmetric_quant_any_weight_within_half_step_and_decodes_as_q_minus_half(bits, group_size, out, inp, seed):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inp, generator=g) * 2
    fmt = Quant.from_dense(W, bits=bits, group_size=group_size, symmetric=True)
    half = 2 ** (bits - 1)
    q = pad_groups(fmt.unpacked_codes(), group_size).float()
    expected = ((q - half) * fmt.scale.float()[..., None]).reshape(out, -1)[:, :inp]
    assert torch.equal(fmt.to_dense(), expected)  # q * s + (-half * s) is exact in fp32
    step = fmt.scale.float().abs().repeat_interleave(group_size, 1)[:, :inp]
    fp16 = W.abs() * 2 ** -10  # the fp16 rounding of the scale, carried over at most `half` steps
    err, top = (fmt.to_dense() - W).abs(), fmt.unpacked_codes() == 2 ** bits - 1
    assert bool((err[~top] <= (step / 2 + fp16 + 1e-6)[~top]).all())
    assert bool((err <= step + fp16 + 1e-6).all())  # the grid has one step less on the far side
    assert fmt.nbytes == fmt.codes.numel() + 2 * fmt.scale.numel()


def test_symmetric_quant_state_dict_roundtrip_is_bit_exact_and_stores_no_minimum():
    fmt = Quant.from_dense(torch.randn(5, 40), bits=4, group_size=32, symmetric=True)
    state = fmt.to_state_dict()
    assert list(state) == ["codes", "scale"]
    back = load(state, fmt.meta())
    assert back.symmetric and back.minimum is None
    assert torch.equal(back.codes, fmt.codes) and torch.equal(back.scale, fmt.scale)
    assert torch.equal(back.to_dense(), fmt.to_dense())


def test_quant_meta_without_symmetric_loads_as_min_max():
    """Checkpoints written before the symmetric grid have no ``symmetric`` key: min-max, as they were."""
    fmt = good_quant()
    meta = {k: v for k, v in fmt.meta().items() if k != "symmetric"}
    back = load(fmt.to_state_dict(), meta)
    assert not back.symmetric and torch.equal(back.minimum, fmt.minimum)


def test_symmetric_quant_with_a_stored_minimum_raises():
    fmt = good_quant()
    with pytest.raises(SparsaError, match=re.escape("f:w: unexpected arrays ['minimum']")):
        load(fmt.to_state_dict(), {**fmt.meta(), "symmetric": True})


def test_symmetric_quant_scale_whose_minimum_overflows_fp16_raises():
    fmt = Quant.from_dense(torch.randn(2, 8), bits=4, group_size=4, symmetric=True)
    scale = fmt.scale.clone()
    scale[0, 0] = 9000.0  # -8 * 9000 is beyond fp16
    with pytest.raises(SparsaError, match=r"f:w: scale holds inf/nan or \|scale\| beyond 65504 / 8"):
        load({"codes": fmt.codes, "scale": scale}, fmt.meta())
