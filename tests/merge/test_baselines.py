"""Tests for sparsa.merge.methods and sparsa.merge.registry: hand-computed merges, properties, errors."""

import re

import pytest
import torch

from sparsa.errors import SparsaError
from sparsa.merge.methods.dare import dare
from sparsa.merge.methods.emr import emr
from sparsa.merge.methods.tall_masks import tall_masks
from sparsa.merge.methods.task_arithmetic import task_arithmetic
from sparsa.merge.methods.ties import ties
from sparsa.merge.registry import storage_bits
from sparsa.merge.registry import METHODS, MergeMethod, get_method, register_method

T = torch.tensor
BUILTINS = ["dare", "emr", "tall_masks", "task_arithmetic", "ties"]


def tv(**tensors) -> dict[str, torch.Tensor]:
    return dict(tensors)


def random_tvs(tasks: int = 3, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {f"t{i}": {"w": torch.randn(5, 7, generator=g), "b": torch.randn(7, generator=g),
                      "s": torch.randn((), generator=g)} for i in range(tasks)}


def assert_close(got: torch.Tensor, expected: list | float) -> None:
    torch.testing.assert_close(got, T(expected, dtype=torch.float32))


# ---- registry ----

def test_methods_registry_builtins_registered_with_kinds_and_defaults():
    get_method("ties")  # loads the built-ins
    assert set(BUILTINS) <= set(METHODS)
    assert {n: METHODS[n].kind for n in BUILTINS} == {"task_arithmetic": "static", "ties": "static", "dare": "static",
                                                      "emr": "per_task", "tall_masks": "per_task"}
    assert METHODS["task_arithmetic"].params == {"lam": 0.3}
    assert METHODS["ties"].params == {"density": 0.2, "lam": 1.0}
    assert METHODS["dare"].params == {"p": 0.5, "lam": 0.3, "then": "task_arithmetic"}
    assert METHODS["emr"].params == {}
    assert METHODS["tall_masks"].params == {"mtl_lam": 0.3, "tall_lam": 0.4}
    assert METHODS["ties"].fn is ties and METHODS["ties"].reference_url == "https://arxiv.org/abs/2306.01708"


def test_get_method_unknown_name_raises_listing_known():
    with pytest.raises(SparsaError, match=re.escape("unknown merge method 'magic'; known: dare, emr, flexswitch, tall_masks")):
        get_method("magic")


def test_register_method_duplicate_name_raises():
    with pytest.raises(RuntimeError, match="merge method 'ties' registered twice"):
        register_method("ties", reference_url="x", kind="static")(lambda tvs: tvs)


def test_register_method_bad_kind_raises():
    with pytest.raises(ValueError, match="kind must be one of static, per_task"):
        register_method("nope", reference_url="x", kind="dynamic")


def test_merge_method_call_unknown_param_raises_and_known_param_runs():
    method = get_method("task_arithmetic")
    assert isinstance(method, MergeMethod)
    with pytest.raises(SparsaError, match=re.escape("merge method 'task_arithmetic' has no parameter 'density'")):
        method({"a": tv(w=T([1.0]))}, density=0.5)
    assert_close(method({"a": tv(w=T([1.0, 2.0]))}, lam=2.0)["w"], [2.0, 4.0])


# ---- hand-computed results ----

def test_task_arithmetic_two_tasks_matches_hand_sum():
    # 0.5 * ([1, -2, 3, 0] + [0.5, 2, -1, 4]) = 0.5 * [1.5, 0, 2, 4]
    out = task_arithmetic({"a": tv(w=T([1.0, -2.0, 3.0, 0.0]), s=T(1.0)),
                           "b": tv(w=T([0.5, 2.0, -1.0, 4.0]), s=T(3.0))}, lam=0.5)
    assert_close(out["w"], [0.75, 0.0, 1.0, 2.0])
    assert_close(out["s"], 2.0)


def test_ties_density_half_three_tasks_matches_hand_disjoint_mean():
    tvs = {"a": tv(w=T([3.0, -1.0, 2.0, 0.5, -6.0, 0.0])),
           "b": tv(w=T([-4.0, 1.0, -0.5, 2.0, 1.5, 0.1])),
           "c": tv(w=T([2.0, 3.0, -1.0, -0.2, -1.5, 0.3]))}
    # k = round(0.5 * 6) = 3; trimmed:
    #   a: [ 3, 0, 2, 0, -6,   0]
    #   b: [-4, 0, 0, 2,  1.5, 0]
    #   c: [ 2, 3, 0, 0, -1.5, 0]
    # sum [1, 3, 2, 2, -6, 0] -> gamma [+, +, +, +, -, 0]
    # disjoint mean: (3+2)/2, 3, 2, 2, (-6-1.5)/2, 0
    assert_close(ties(tvs, density=0.5)["w"], [2.5, 3.0, 2.0, 2.0, -3.75, 0.0])
    assert_close(ties(tvs, density=0.5, lam=0.4)["w"], [1.0, 1.2, 0.8, 0.8, -1.5, 0.0])


def test_ties_scalar_tensor_returns_plain_mean():
    out = ties({"a": tv(s=T(1.0)), "b": tv(s=T(-4.0))}, density=0.2, lam=0.3)
    assert_close(out["s"], -1.5)


def test_dare_task_arithmetic_seed0_matches_hand_drops():
    g = torch.Generator().manual_seed(0)
    assert torch.equal(torch.rand((2, 4), generator=g) >= 0.5, T([[False, True, False, False],
                                                                 [False, True, False, True]]))
    tvs = {"a": tv(w=T([1.0, 2.0, 3.0, 4.0])), "b": tv(w=T([-1.0, 0.5, 2.0, -3.0]))}
    # survivors x 1/(1-0.5) = 2:  a -> [0, 4, 0, 0], b -> [0, 1, 0, -6]; 0.5 * sum = [0, 2.5, 0, -3]
    out = dare(tvs, generator=torch.Generator().manual_seed(0), p=0.5, lam=0.5)
    assert_close(out["w"], [0.0, 2.5, 0.0, -3.0])
    assert torch.equal(dare(tvs, p=0.5, lam=0.5)["w"], out["w"])  # generator=None seeds 0


def test_dare_ties_seed1_matches_hand_disjoint_mean():
    g = torch.Generator().manual_seed(1)
    assert torch.equal(torch.rand((3, 4), generator=g) >= 0.5, T([[True, False, False, True],
                                                                 [False, True, False, True],
                                                                 [True, False, True, True]]))
    tvs = {"a": tv(w=T([1.0, -2.0, 3.0, 1.0])), "b": tv(w=T([2.0, 1.0, -1.0, -4.0])),
           "c": tv(w=T([-3.0, 1.0, 2.0, 1.0]))}
    # rescaled: a [2, 0, 0, 2], b [0, 2, 0, -8], c [-6, 0, 4, 2]; sum [-4, 2, 4, -4] -> gamma [-, +, +, -]
    # disjoint mean: -6, 2, 4, -8
    out = dare(tvs, generator=torch.Generator().manual_seed(1), p=0.5, lam=1.0, then="ties")
    assert_close(out["w"], [-6.0, 2.0, 4.0, -8.0])


def test_emr_three_tasks_two_tensors_matches_hand_rescalers():
    tvs = {"a": tv(w=T([[2.0, -1.0, 0.0]]), b=T([3.0]), s=T(0.5)),
           "b": tv(w=T([[-1.0, -2.0, 1.0]]), b=T([1.0]), s=T(-1.0)),
           "c": tv(w=T([[1.0, 0.0, -2.0]]), b=T([2.0]), s=T(2.0))}
    # flattened: sum [2, -3, -1, 6] -> gamma [+, -, -, +]; tau_uni [2, -2, -2, 3]
    # M_a [1, 1, 0, 1], M_b [0, 1, 0, 1], M_c [1, 0, 1, 1]
    # lambda_a = 6/7, lambda_b = 5/5, lambda_c = 5/7 (one rescaler over both tensors)
    out = emr(tvs)
    assert_close(out["a"]["w"], [[12 / 7, -12 / 7, 0.0]])
    assert_close(out["a"]["b"], [18 / 7])
    assert_close(out["b"]["w"], [[0.0, -2.0, 0.0]])
    assert_close(out["b"]["b"], [3.0])
    assert_close(out["c"]["w"], [[10 / 7, 0.0, -10 / 7]])
    assert_close(out["c"]["b"], [15 / 7])
    assert [out[t]["s"].item() for t in "abc"] == [0.5, -1.0, 2.0]


@pytest.mark.parametrize("tall_lam, mask_a, mask_b", [(1.0, [1, 0, 0, 0], [1, 0, 1, 1]),
                                                      (0.4, [1, 1, 1, 0], [1, 1, 1, 1])])
def test_tall_masks_two_tasks_matches_hand_masks(tall_lam, mask_a, mask_b):
    tvs = {"a": tv(w=T([1.0, -2.0, 0.5, 0.0]), s=T(7.0)), "b": tv(w=T([1.0, 2.0, -1.0, 3.0]), s=T(-1.0))}
    # tau_MTL = 0.5 * [2, 0, -0.5, 3] = [1, 0, -0.25, 1.5]
    # tall_lam 1:   a: 1 > 0, 2 > 2 no, 0.5 > 0.75 no, 0 > 1.5 no;  b: 1 > 0, 2 > 2 no, 1 > 0.75, 3 > 1.5
    # tall_lam 0.4: a: 1 > 0, 2 > 0.8, 0.5 > 0.3, 0 > 0.6 no;     b: all kept
    out = tall_masks(tvs, mtl_lam=0.5, tall_lam=tall_lam)
    mtl = [1.0, 0.0, -0.25, 1.5]
    assert_close(out["a"]["w"], [m * v for m, v in zip(mask_a, mtl)])
    assert_close(out["b"]["w"], [m * v for m, v in zip(mask_b, mtl)])
    assert out["a"]["s"].item() == 7.0 and out["b"]["s"].item() == -1.0


# ---- properties ----

def test_task_arithmetic_linear_combination_is_linear():
    x, y = random_tvs(seed=1), random_tvs(seed=2)
    mix = {t: {n: 2.0 * x[t][n] - 0.5 * y[t][n] for n in x[t]} for t in x}
    fx, fy, fmix = task_arithmetic(x), task_arithmetic(y), task_arithmetic(mix)
    for n in fx:
        torch.testing.assert_close(fmix[n], 2.0 * fx[n] - 0.5 * fy[n])


@pytest.mark.parametrize("density, shape", [(0.2, (5, 7)), (0.5, (9,)), (0.01, (3, 4)), (1.0, (2, 3, 2)), (0.0, (4,))])
def test_ties_single_task_keeps_exactly_k_entries_per_tensor(density, shape):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g)
    n = x.numel()
    k = min(n, max(round(density * n), 1 if density > 0 else 0))
    out = ties({"a": {"w": x}}, density=density)["w"]
    assert int((out != 0).sum()) == k
    kept = out != 0
    if 0 < k < n:
        assert x[kept].abs().min() >= x[~kept].abs().max()
    torch.testing.assert_close(out[kept], x[kept])


def test_ties_merged_support_lies_in_union_of_top_k():
    tvs = random_tvs(tasks=4, seed=5)
    out = ties(tvs, density=0.2)
    for name in ("w", "b"):
        union = torch.zeros_like(out[name], dtype=torch.bool)
        for t in tvs:
            single = ties({t: {name: tvs[t][name]}}, density=0.2)[name]
            union |= single != 0
        assert not bool(((out[name] != 0) & ~union).any())


def test_dare_many_seeds_mean_preserves_expectation():
    tvs = {t: {"w": v["w"]} for t, v in random_tvs(tasks=2, seed=7).items()}
    runs = 1000
    total = sum(dare(tvs, generator=torch.Generator().manual_seed(s), p=0.5, lam=1.0)["w"] for s in range(runs))
    torch.testing.assert_close(total / runs, tvs["t0"]["w"] + tvs["t1"]["w"], atol=0.25, rtol=0.0)


def test_dare_p_zero_equals_task_arithmetic():
    tvs = random_tvs(seed=4)
    got, want = dare(tvs, p=0.0, lam=0.3), task_arithmetic(tvs, lam=0.3)
    for n in ("w", "b"):
        assert torch.equal(got[n], want[n])


def test_emr_masks_agree_with_elected_sign_and_rescaler_preserves_l1():
    tvs = random_tvs(tasks=3, seed=9)
    out = emr(tvs)
    for t in tvs:
        for n in ("w", "b"):
            x = torch.stack([tvs[u][n] for u in tvs])
            gamma = x.sum(0).sign()
            rec = out[t][n]
            assert torch.equal(rec != 0, tvs[t][n] * gamma > 0)
            assert torch.equal(rec.sign()[rec != 0], gamma[rec != 0])
        l1_rec = sum(out[t][n].abs().sum() for n in tvs[t])
        l1_in = sum(tvs[t][n].abs().sum() for n in tvs[t])
        torch.testing.assert_close(l1_rec, l1_in)


def test_emr_task_with_no_agreeing_entry_reconstructs_zero():
    out = emr({"a": tv(w=T([1.0, 1.0])), "b": tv(w=T([2.0, 2.0])), "c": tv(w=T([-1.0, -1.0]))})
    assert_close(out["c"]["w"], [0.0, 0.0])
    assert_close(out["a"]["w"], [1.0, 1.0])  # tau_uni = [2, 2], lambda_a = 2 / 4


def test_tall_masks_zero_threshold_keeps_every_nonzero_entry():
    tvs = random_tvs(seed=11)
    tvs["t0"]["w"][0, :3] = 0.0
    out = tall_masks(tvs, tall_lam=0.0)
    for t in tvs:
        for n in ("w", "b"):
            mtl = 0.3 * sum(tvs[u][n] for u in tvs)
            torch.testing.assert_close(out[t][n], torch.where(tvs[t][n] != 0, mtl, torch.zeros_like(mtl)))


@pytest.mark.parametrize("name", BUILTINS)
def test_every_method_inputs_untouched_output_float32(name):
    tvs = {t: {n: v.to(torch.float16) for n, v in vec.items()} for t, vec in random_tvs(seed=13).items()}
    before = {t: {n: v.clone() for n, v in vec.items()} for t, vec in tvs.items()}
    out = get_method(name)(tvs)
    vecs = [out] if get_method(name).kind == "static" else list(out.values())
    for vec in vecs:
        assert set(vec) == {"w", "b", "s"}
        assert all(v.dtype == torch.float32 and v.shape == tvs["t0"][n].shape for n, v in vec.items())
    for t in tvs:
        for n in tvs[t]:
            assert torch.equal(tvs[t][n], before[t][n])


@pytest.mark.parametrize("name", BUILTINS)
def test_every_method_same_inputs_deterministic(name):
    def flat(out):
        if get_method(name).kind == "static":
            return out
        return {f"{t}/{n}": v for t in out for n, v in out[t].items()}

    fa, fb = flat(get_method(name)(random_tvs(seed=17))), flat(get_method(name)(random_tvs(seed=17)))
    assert set(fa) == set(fb)
    assert all(torch.equal(fa[k], fb[k]) for k in fa)


def test_storage_bits_each_method_matches_formula():
    assert storage_bits("task_arithmetic", 100, 8) == 3200
    assert storage_bits("ties", 100, 8) == 3200
    assert storage_bits("dare", 100, 8) == 3200
    assert storage_bits("emr", 100, 8) == 8 * 100 + 32 * 8 + 32 * 100
    assert storage_bits("tall_masks", 100, 8) == 8 * 100 + 32 * 100


# ---- errors ----

def test_merge_missing_tensor_raises_naming_tensor_and_task():
    tvs = {"mnist": tv(w=T([1.0]), b=T([1.0])), "rot90": tv(w=T([1.0]))}
    with pytest.raises(SparsaError, match=re.escape("tensor 'b': missing from task 'rot90'")):
        ties(tvs)


def test_merge_extra_tensor_raises_naming_tensor_and_task():
    tvs = {"mnist": tv(w=T([1.0])), "rot90": tv(w=T([1.0]), extra=T([2.0]))}
    with pytest.raises(SparsaError, match=re.escape("tensor 'extra': in task 'rot90' but missing from task 'mnist'")):
        emr(tvs)


@pytest.mark.parametrize("name", BUILTINS)
def test_merge_mismatched_shape_raises_naming_tensor_task_and_shapes(name):
    tvs = {"mnist": {"layer.0.weight": torch.zeros(4, 4)}, "rot90": {"layer.0.weight": torch.zeros(4, 3)}}
    msg = "tensor 'layer.0.weight': task 'rot90' has shape [4, 3], expected [4, 4]"
    with pytest.raises(SparsaError, match=re.escape(msg)):
        get_method(name)(tvs)


def test_merge_no_tasks_raises():
    with pytest.raises(SparsaError, match="no task vectors to merge"):
        task_arithmetic({})


@pytest.mark.parametrize("call, msg", [
    (lambda x: ties(x, density=1.5), "density must be in [0, 1], got 1.5"),
    (lambda x: dare(x, p=1.0), "p must be in [0, 1), got 1.0"),
    (lambda x: dare(x, then="mean"), "dare: then must be 'task_arithmetic' or 'ties'"),
    (lambda x: storage_bits("magic", 1, 1), "unknown merge method 'magic'"),
])
def test_merge_bad_parameter_raises(call, msg):
    with pytest.raises(SparsaError, match=re.escape(msg)):
        call({"a": tv(w=T([1.0]))})
