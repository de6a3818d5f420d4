"""The 2:4 routing between torch's semi-structured path and ours: the choice logic (timers
injected), and on the CPU, where torch's path refuses, always ours."""

import pytest
import torch

from sparsa.formats.nm import NM
from sparsa.kernels.layouts import cached_layout
from sparsa.kernels.triton import two_four


def test_pick_faster_takes_the_smallest_time_and_drops_a_candidate_that_raises():
    times = {"ours": 2.0, "torch": 1.0}
    timer = lambda run: times[run()]  # noqa: E731 - each run returns its own name here
    assert two_four.pick_faster({"ours": lambda: "ours", "torch": lambda: "torch"}, timer) == "torch"
    times["torch"] = 3.0
    assert two_four.pick_faster({"ours": lambda: "ours", "torch": lambda: "torch"}, timer) == "ours"

    def refuses():
        raise RuntimeError("shape not supported")

    assert two_four.pick_faster({"ours": lambda: "ours", "torch": refuses}, lambda run: run() and 1.0) == "ours"
    with pytest.raises(RuntimeError, match="shape not supported"):
        two_four.pick_faster({"ours": refuses, "torch": lambda: "torch"}, lambda run: run() and 1.0)


def test_routed_linear_runs_ours_where_torch_cannot_take_the_weight():
    W = torch.randn(32, 64)
    W.view(32, 16, 4)[..., :2] = 0  # 2:4
    weight = NM.from_dense(W, n=2, m=4)
    x2 = torch.randn(5, 64, dtype=torch.float16)
    calls = []

    def ours():
        calls.append(1)
        return x2 @ weight.to_dense(torch.float16).T

    y = two_four.routed_linear(x2, weight, None, ours, timer=lambda run: pytest.fail("nothing to time"))
    assert calls == [1] and y.shape == (5, 32)
    assert cached_layout(weight, two_four.new_routes)[("semi", torch.float16)] is None  # refused once, not retried
