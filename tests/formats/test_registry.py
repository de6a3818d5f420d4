"""Tests for sparsa.formats.registry and the shared Format base (meta, nbytes, to, I/O)."""

import re
from dataclasses import dataclass

import pytest
import torch

from sparsa.errors import SparsaError
from sparsa.formats import (FORMATS, NM, Bitmap, BlockSparse, BlockSparseInt8, Format, KQuant, Quant, SparseQuant,
                            SpQR, get_format, register_format)


def examples() -> list[Format]:
    W = torch.tensor([[0.0, 1.0, 0.0, -2.0, 0.5, 0.0, 0.0, 3.0],
                      [0.0, 0.0, 0.0, 0.0, 0.0, 4.0, -1.0, 0.0]])
    return [Bitmap.from_dense(W), NM.from_dense(W, n=2, m=4), BlockSparse.from_dense(W, block=(1, 2)),
            Quant.from_dense(W, bits=4, group_size=4), SparseQuant.from_dense(W, bits=4, group_size=4),
            BlockSparseInt8.from_dense(W, block=(2, 1))]


@pytest.mark.parametrize("name, cls", [("bitmap", Bitmap), ("nm", NM), ("block", BlockSparse), ("quant", Quant),
                                       ("sparse_quant", SparseQuant), ("spqr", SpQR), ("block_int8", BlockSparseInt8),
                                       ("kquant", KQuant)])
def test_get_format_known_name_returns_class(name, cls):
    assert get_format(name) is cls
    assert cls.format_name == name
    assert FORMATS[name] is cls


def test_formats_table_holds_exactly_the_builtin_formats():
    assert sorted(FORMATS) == ["bitmap", "block", "block_int8", "kquant", "nm", "quant", "sign_mask", "sparse_quant", "spqr"]


def test_get_format_unknown_name_raises_listing_known():
    with pytest.raises(SparsaError, match=re.escape("unknown format 'csr'; known: bitmap, block, block_int8, kquant, nm, quant")):
        get_format("csr")


def test_register_format_duplicate_name_raises():
    with pytest.raises(RuntimeError, match=re.escape("format 'nm' registered twice")):
        register_format("nm")(type("Other", (), {}))
    assert FORMATS["nm"] is NM


def test_register_format_new_name_files_class_and_sets_name():
    try:
        @register_format("test-dummy")
        @dataclass(frozen=True, eq=False)
        class Dummy(Format):
            ARRAYS = ("data",)
            data: torch.Tensor

        assert get_format("test-dummy") is Dummy and Dummy.format_name == "test-dummy"
        fmt = Dummy(shape=(1, 2), data=torch.zeros(3, dtype=torch.int16))
        assert fmt.meta() == {"shape": [1, 2]} and fmt.nbytes == 6 and fmt.numel == 2
    finally:
        FORMATS.pop("test-dummy", None)
    assert "test-dummy" not in FORMATS


@pytest.mark.parametrize("fmt", examples(), ids=lambda f: f.format_name)
def test_format_nbytes_equals_bytes_of_state_dict(fmt):
    state = fmt.to_state_dict()
    assert list(state) == list(fmt.ARRAYS)
    assert fmt.nbytes == sum(t.numel() * t.element_size() for t in state.values())
    assert all(t.is_contiguous() for t in state.values())
    assert fmt.numel == 16


@pytest.mark.parametrize("fmt", examples(), ids=lambda f: f.format_name)
def test_format_from_state_dict_via_get_format_roundtrips_bit_exactly(fmt):
    cls = get_format(fmt.format_name)
    back = cls.from_state_dict(fmt.to_state_dict(), fmt.meta(), where="f:w")
    assert type(back) is type(fmt) and back.meta() == fmt.meta()
    for name, array in fmt.arrays().items():
        assert torch.equal(back.arrays()[name], array) and back.arrays()[name].dtype == array.dtype
    assert torch.equal(back.to_dense(), fmt.to_dense())


@pytest.mark.parametrize("fmt", examples(), ids=lambda f: f.format_name)
def test_format_to_same_device_keeps_arrays_and_meta(fmt):
    moved = fmt.to("cpu")
    assert type(moved) is type(fmt) and moved.meta() == fmt.meta()
    for name, array in fmt.arrays().items():
        assert torch.equal(moved.arrays()[name], array)


@pytest.mark.parametrize("fmt", examples(), ids=lambda f: f.format_name)
def test_format_meta_is_json_ready_with_list_shape(fmt):
    meta = fmt.meta()
    assert meta["shape"] == [2, 8]
    assert not set(meta) & set(fmt.ARRAYS)
    assert all(not isinstance(v, (tuple, torch.Tensor)) for v in meta.values())


@pytest.mark.parametrize("fmt", examples(), ids=lambda f: f.format_name)
def test_format_from_state_dict_non_tensor_array_raises(fmt):
    arrays = fmt.to_state_dict()
    name = fmt.ARRAYS[0]
    arrays[name] = arrays[name].tolist()
    with pytest.raises(SparsaError, match=re.escape(f"f:w: {name} is not a tensor")):
        type(fmt).from_state_dict(arrays, fmt.meta(), where="f:w")


def test_format_base_to_dense_is_abstract():
    with pytest.raises(NotImplementedError):
        Format(shape=(1, 1)).to_dense()
