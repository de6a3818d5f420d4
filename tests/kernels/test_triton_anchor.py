"""The Triton AnchorAttention kernels (anchors, stripe index, stripe attention) against the PyTorch
reference: under ``TRITON_INTERPRET=1`` on the CPU (fp32, fp16), on the GPU where there is one
(bf16 too). Sizes stay small (N <= 300, 16-row tiles) so the interpreter runs each in seconds."""

import math

import pytest
import torch

from sparsa.attention.anchor import SCORES, anchor_attention, identify_reference, tile_means
from sparsa.attention.config import AnchorConfig
from sparsa.errors import SparsaError
from sparsa.kernels.reference_attention import anchors_reference, kv_heads, stripe_attention_reference
from sparsa.kernels.stripe_regions import StripeIndex, StripeRegions
from sparsa.kernels.triton.anchor import anchor_attention_triton
from sparsa.kernels.triton.anchor_dense import anchors_triton
from sparsa.kernels.triton.stripe_attention import stripe_attention_triton
from sparsa.kernels.triton.stripe_index import stripe_index_triton
from triton_cases import DEVICE, DTYPES, needs_triton, tolerance

pytestmark = needs_triton


def qkv(b: int, hq: int, hkv: int, n: int, d: int, dtype: torch.dtype, seed: int = 0):
    """Random q [b, hq, n, d] and k, v [b, hkv, n, d] on :data:`DEVICE`."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g) for h in (hq, hkv, hkv))
    return tuple(x.to(DEVICE, dtype) for x in (q, k, v))


def theta_with_margin(q: torch.Tensor, k: torch.Tensor, regions: StripeRegions, scale: float,
                      identify: str = "rows") -> float:
    """A theta keeping about half the stripe candidates, set halfway across the widest gap between
    neighbouring fp32 reference scores of the ``identify`` rule there, so summation-order rounding
    flips no key."""
    scores = SCORES[identify](q.float(), k.float(), anchors_reference(q.float(), k.float(), regions, scale),
                              regions, scale)
    values = scores[regions.stripe_candidates(q.shape[2], q.device).expand_as(scores)].sort().values
    if values.numel() < 2:
        return 1.0
    lo, hi = int(values.numel() * 0.4), max(int(values.numel() * 0.6), int(values.numel() * 0.4) + 2)
    window = values[lo:hi]
    i = int(window.diff().argmax())
    return -float(window[i] + window[i + 1]) / 2


def anchor_tolerance(dtype: torch.dtype) -> dict:
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-3, atol=2e-3)


def lse_tolerance(dtype: torch.dtype) -> dict:
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-4, atol=1e-4)


def check_against_reference(q, k, v, regions: StripeRegions, theta: float, scale: float, identify: str,
                            **kw) -> StripeIndex:
    """Run the kernels; compare anchors, the CSR (with the fp32 reference on the same inputs) and
    O/LSE (with the reference given the kernels' own index). Returns the index."""
    o, lse, index, anchors = anchor_attention_triton(q, k, v, regions, theta, scale, identify, **kw)
    n = q.shape[2]
    torch.testing.assert_close(anchors, anchors_reference(q, k, regions, scale), **anchor_tolerance(q.dtype))
    index.check(regions, n)
    qf, kf = q.float(), k.float()
    expected = identify_reference(qf, kf, anchors_reference(qf, kf, regions, scale), regions, theta, scale, identify)
    assert torch.equal(index.indptr, expected.indptr) and torch.equal(index.indices, expected.indices)
    o_ref, lse_ref = stripe_attention_reference(q, k, v, regions, index, scale)
    assert o.dtype == q.dtype and o.shape == q.shape and lse.dtype == torch.float32
    torch.testing.assert_close(o.float(), o_ref.float(), **tolerance(q.dtype))
    torch.testing.assert_close(lse, lse_ref, **lse_tolerance(q.dtype))
    return index


CASES = {  # name: (batch, Hq, Hkv, N, D, block_m, step, init, window)
    "n_multiple_of_group_mha_batch2": (2, 2, 2, 192, 16, 16, 2, 16, 0),
    "n_not_multiple_gqa3_d64_window": (1, 3, 1, 300, 64, 16, 3, 20, 16),
    "n_shorter_than_group_gqa4": (1, 4, 1, 27, 16, 16, 2, 8, 0),
    "gqa8_init_zero_step1_window": (1, 8, 1, 100, 16, 16, 1, 0, 40),
    "gqa4_init_past_groups_batch2": (2, 4, 1, 150, 32, 32, 1, 80, 0),
}


@pytest.mark.parametrize("identify", ["rows", "pooled"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_anchor_attention_shapes_match_reference(case, dtype, identify):
    b, hq, hkv, n, d, block_m, step, init, window = CASES[case]
    q, k, v = qkv(b, hq, hkv, n, d, dtype, seed=n)
    regions = StripeRegions(block_m, step, init, window)
    theta = theta_with_margin(q, k, regions, d**-0.5, identify)
    index = check_against_reference(q, k, v, regions, theta, d**-0.5, identify)
    candidates = int(regions.stripe_candidates(n).sum()) * b * hq
    assert 0 < index.nnz < candidates or candidates == 0


@pytest.mark.parametrize("identify", ["rows", "pooled"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_anchor_attention_theta_inf_equals_causal_sdpa(dtype, identify):
    q, k, v = qkv(1, 4, 2, 131, 16, dtype, seed=1)
    regions = StripeRegions(16, 2, 16)
    o, lse, index, _ = anchor_attention_triton(q, k, v, regions, math.inf, 0.25, identify)
    assert index.nnz == int(regions.stripe_candidates(131).sum()) * 4
    qf, kf, vf = q.float(), k.float(), v.float()
    o_ref = torch.nn.functional.scaled_dot_product_attention(qf, kf, vf, is_causal=True, scale=0.25, enable_gqa=True)
    torch.testing.assert_close(o.float(), o_ref.to(dtype).float(), **tolerance(dtype))
    scores = (qf @ kv_heads(kf, 4).transpose(-1, -2)) * 0.25
    causal = torch.ones(131, 131, dtype=torch.bool, device=q.device).tril()
    torch.testing.assert_close(lse, torch.logsumexp(scores.masked_fill(~causal, -math.inf), -1), **lse_tolerance(dtype))


@pytest.mark.parametrize("identify", ["rows", "pooled"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_anchor_attention_theta_minus_inf_equals_init_plus_local(dtype, identify):
    q, k, v = qkv(2, 2, 1, 150, 16, dtype, seed=2)
    regions = StripeRegions(16, 2, 16, window=24)
    o, lse, index, _ = anchor_attention_triton(q, k, v, regions, -math.inf, 0.25, identify)
    assert index.nnz == 0 and index.counts().shape == (2, 2, 5) and not index.counts().any()
    o_ref, lse_ref = stripe_attention_reference(q, k, v, regions, None, 0.25)
    torch.testing.assert_close(o.float(), o_ref.float(), **tolerance(dtype))
    torch.testing.assert_close(lse, lse_ref, **lse_tolerance(dtype))


@pytest.mark.parametrize("identify", ["rows", "pooled"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_stripe_index_small_chunks_equals_nonzero_of_reference_mask(dtype, identify):
    """16-key tiles: each group row's bits come from many keep programs and its fill crosses chunks;
    no key twice, none missing; K1's pooled queries are the tile means."""
    q, k, _ = qkv(2, 4, 2, 230, 16, dtype, seed=3)
    regions = StripeRegions(16, 3, 24)
    theta = theta_with_margin(q, k, regions, 0.25, identify)
    anchors, pooled_anchors, pooled_queries = anchors_triton(q, k, regions, 0.25, 16)
    torch.testing.assert_close(pooled_queries, tile_means(q, 16), rtol=1e-5, atol=1e-5)
    index = stripe_index_triton(q, k, anchors, pooled_anchors, pooled_queries, regions, theta, 0.25, identify, 16)
    index.check(regions, 230)
    qf, kf = q.float(), k.float()
    keep = SCORES[identify](qf, kf, anchors_reference(qf, kf, regions, 0.25), regions, 0.25) >= -theta
    keep &= regions.stripe_candidates(230, q.device)
    rows = keep.reshape(-1, 230).nonzero()
    assert torch.equal(index.indices.long(), rows[:, 1])
    assert torch.equal(index.indptr[1:], keep.reshape(-1, 230).sum(1).cumsum(0))
    assert torch.equal(index.to_mask(230), keep)


@pytest.mark.parametrize("dtype", DTYPES)
def test_stripe_attention_random_index_gqa_matches_reference(dtype):
    """K3 alone on a random index (some rows empty, some full), 16-key gathers."""
    q, k, v = qkv(2, 4, 1, 170, 32, dtype, seed=4)
    regions = StripeRegions(16, 2, 16)
    g = torch.Generator().manual_seed(5)
    density = torch.tensor([0.0, 0.3, 1.0, 0.6]).view(1, 4, 1, 1)
    keep = (torch.rand(2, 4, regions.n_groups(170), 170, generator=g) < density) & regions.stripe_candidates(170)
    index = StripeIndex.from_mask(keep.to(DEVICE))
    o, lse = stripe_attention_triton(q, k, v, regions, index, 0.2, 16)
    o_ref, lse_ref = stripe_attention_reference(q, k, v, regions, index, 0.2)
    torch.testing.assert_close(o.float(), o_ref.float(), **tolerance(dtype))
    torch.testing.assert_close(lse, lse_ref, **lse_tolerance(dtype))


def test_anchor_attention_strided_inputs_equal_contiguous():
    """q, k in [B, N, H, D] memory (permuted views), v with a strided last dim (copied)."""
    q, k, v = qkv(2, 4, 2, 90, 16, torch.float32, seed=6)
    regions = StripeRegions(16, 2, 16)
    theta = theta_with_margin(q, k, regions, 0.25)
    q_view = q.transpose(1, 2).contiguous().transpose(1, 2)
    k_view = k.transpose(1, 2).contiguous().transpose(1, 2)
    v_view = v.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not q_view.is_contiguous() and v_view.stride(-1) != 1
    strided = anchor_attention_triton(q_view, k_view, v_view, regions, theta, 0.25, "rows")
    dense = anchor_attention_triton(q, k, v, regions, theta, 0.25, "rows")
    for a, b in ((strided[0], dense[0]), (strided[1], dense[1]), (strided[3], dense[3]),
                 (strided[2].indptr, dense[2].indptr), (strided[2].indices, dense[2].indices)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("identify", ["rows", "pooled"])
def test_anchor_attention_triton_backend_equals_torch_backend(identify):
    q, k, v = qkv(1, 2, 1, 100, 16, torch.float32, seed=8)
    regions = StripeRegions(16, 2, 16)
    theta = theta_with_margin(q, k, regions, 0.25, identify)
    config = dict(theta=theta, identify=identify, block_m=16, step=2, init=16, window=0)  # regions above
    triton_run = anchor_attention(q, k, v, AnchorConfig(**config, backend="triton"), scale=0.25)
    torch_run = anchor_attention(q, k, v, AnchorConfig(**config, backend="torch"), scale=0.25)
    assert torch.equal(triton_run.index.indices, torch_run.index.indices) and triton_run.index.nnz > 0
    torch.testing.assert_close(triton_run.o, torch_run.o, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(triton_run.lse, torch_run.lse, rtol=1e-5, atol=1e-5)


def test_anchor_attention_empty_sequence_returns_empty_outputs():
    q, k, v = qkv(2, 2, 1, 0, 16, torch.float32)
    o, lse, index, anchors = anchor_attention_triton(q, k, v, StripeRegions(16, 2, 16), 1.0, 0.25, "rows")
    assert o.shape == (2, 2, 0, 16) and lse.shape == anchors.shape == (2, 2, 0)
    assert index.nnz == 0 and index.indptr.tolist() == [0]


def bad_call(**changes):
    """Call the wrapper with one argument changed from a valid fp32 call."""
    args = dict(q=torch.zeros(1, 2, 8, 16), k=torch.zeros(1, 1, 8, 16), v=torch.zeros(1, 1, 8, 16),
                regions=StripeRegions(16, 2, 16), theta=1.0, scale=0.25, identify="rows")
    args = {name: x.to(DEVICE) if isinstance(x, torch.Tensor) else x for name, x in args.items()} | changes
    return anchor_attention_triton(**args)


def test_anchor_attention_head_dim_not_power_of_two_raises():
    x = torch.zeros(1, 1, 8, 24, device=DEVICE)
    with pytest.raises(SparsaError, match=r"head dim D=24: .* power of two in 16\.\.256"):
        bad_call(q=x, k=x, v=x)
    x = torch.zeros(1, 1, 8, 8, device=DEVICE)
    with pytest.raises(SparsaError, match="head dim D=8"):
        bad_call(q=x, k=x, v=x)


@pytest.mark.parametrize("block_m", [8, 48, 256])
def test_anchor_attention_block_m_out_of_range_raises(block_m):
    with pytest.raises(SparsaError, match=rf"regions\.block_m={block_m}: .* power of two in 16\.\.128"):
        bad_call(regions=StripeRegions(block_m, 2, 16))


def test_anchor_attention_unknown_identify_raises():
    with pytest.raises(SparsaError, match="identify='mean': .* take one of rows, pooled"):
        bad_call(identify="mean")


def test_anchor_attention_block_n_not_power_of_two_raises():
    with pytest.raises(SparsaError, match="block_n=24: must be a power of two"):
        bad_call(block_n=24)


def test_anchor_attention_cpu_tensors_without_interpreter_raise(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.zeros(1, 1, 8, 16)
    with pytest.raises(SparsaError, match="q, k, v on cpu, cpu, cpu: .* need CUDA tensors"):
        bad_call(q=x, k=x, v=x)


def test_anchor_attention_bf16_under_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.zeros(1, 1, 8, 16, dtype=torch.bfloat16)
    with pytest.raises(SparsaError, match="q dtype torch.bfloat16 under TRITON_INTERPRET=1"):
        bad_call(q=x, k=x, v=x)


@pytest.mark.parametrize("dtypes", [(torch.float64,) * 3, (torch.float32, torch.float16, torch.float16)])
def test_anchor_attention_unsupported_or_mixed_dtypes_raise(dtypes):
    q, k, v = (torch.zeros(1, 1, 8, 16, dtype=t, device=DEVICE) for t in dtypes)
    with pytest.raises(SparsaError, match=r"q, k, v dtypes .* take one dtype of fp32, fp16, bf16"):
        bad_call(q=q, k=k, v=v)


def test_anchor_attention_mismatched_shapes_raise():
    with pytest.raises(SparsaError, match="disagree"):
        bad_call(k=torch.zeros(1, 3, 8, 16, device=DEVICE), v=torch.zeros(1, 3, 8, 16, device=DEVICE))

