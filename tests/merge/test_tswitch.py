"""T-Switch: the mask of each sign, the sign, the scale options, and the compressed task vector."""

import math

import pytest
import torch

from sparsa.errors import SparsaError
from sparsa.merge.config import TSwitchConfig
from sparsa.merge.methods.tswitch import compress_task_vector, compress_tensor, keep_by_sign, tensor_scale

TAU = torch.tensor([0.5, -0.1, 0.2, -0.8, 0.05, -0.3, 0.9, 0.0, -0.02, 0.4])
# positives 0.5 0.2 0.05 0.9 0.4 (5) -> keep round(0.4*5)=2: 0.9, 0.5; negatives -0.1 -0.8 -0.3 -0.02 (4) -> 2: -0.8, -0.3


def test_keep_by_sign_drop_06_keeps_top_of_each_sign_separately():
    keep = keep_by_sign(TAU, 0.6)
    assert keep.nonzero().squeeze(1).tolist() == [0, 3, 5, 6]


def test_keep_by_sign_drop_0_keeps_every_nonzero():
    assert torch.equal(keep_by_sign(TAU, 0.0), TAU != 0)


@pytest.mark.parametrize("norm,expected", [("l2", math.sqrt((0.25 + 0.64 + 0.09 + 0.81) / 4)),
                                           ("lsq", (0.5 + 0.8 + 0.3 + 0.9) / 4),
                                           ("l1", float(TAU.abs().sum()) / 4)])
def test_tensor_scale_each_norm_matches_hand_value(norm, expected):
    assert tensor_scale(TAU, keep_by_sign(TAU, 0.6), norm) == pytest.approx(expected, rel=1e-6)


def test_compress_tensor_reconstructs_scale_times_sign_of_kept():
    m = compress_tensor(TAU.view(2, 5), TSwitchConfig(drop_ratio=0.6))
    lam = math.sqrt((0.25 + 0.64 + 0.09 + 0.81) / 4)
    expect = torch.tensor([1, 0, 0, -1, 0, -1, 1, 0, 0, 0], dtype=torch.float32).view(2, 5) * lam
    torch.testing.assert_close(m.to_dense(), expect)


def test_compress_tensor_l2_scale_preserves_kept_norm():
    tau = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    keep = keep_by_sign(tau, 0.7)
    m = compress_tensor(tau, TSwitchConfig(drop_ratio=0.7))
    assert float(m.to_dense().norm()) == pytest.approx(float(tau[keep].norm()), rel=1e-5)
    assert m.nnz == int(keep.sum()) == round(0.3 * int((tau > 0).sum())) + round(0.3 * int((tau < 0).sum()))


def test_compress_task_vector_keeps_0d_raw_and_counts_bytes():
    tau = {"w": torch.randn(8, 8), "b": torch.randn(8), "t": torch.tensor(0.25)}
    ctv = compress_task_vector(tau, TSwitchConfig(encoding="bitmap"))
    assert set(ctv.masks) == {"w", "b"} and torch.equal(ctv.raw["t"], torch.tensor(0.25))
    # bitmap: 8 + 1 position bytes, signs of round(0.4 * positives) + ..., 4-byte scale each, 4 bytes raw
    expect = sum(m.positions.numel() + m.signs.numel() + 4 for m in ctv.masks.values()) + 4
    assert ctv.nbytes == expect and ctv.numel == 73
    out = ctv.decompress()
    assert out["t"] == 0.25 and out["w"].shape == (8, 8)


def test_compress_task_vector_zero_tensor_gives_zero_scale():
    ctv = compress_task_vector({"w": torch.zeros(4, 4)})
    assert ctv.masks["w"].nnz == 0 and float(ctv.masks["w"].scale) == 0.0


@pytest.mark.parametrize("kwargs,match", [(dict(drop_ratio=1.0), "drop_ratio"), (dict(scale_norm="max"), "scale_norm"),
                                          (dict(encoding="zip"), "encoding"), (dict(group_size=0), "group_size")])
def test_tswitch_config_bad_values_raise(kwargs, match):
    with pytest.raises(SparsaError, match=match):
        TSwitchConfig(**kwargs)
