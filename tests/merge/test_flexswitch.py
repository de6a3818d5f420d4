"""FlexSwitch: magnitude tables, the budget allocation, learned row gates and the budget fit."""

import pytest
import torch

from sparsa.errors import SparsaError
from sparsa.merge.config import FlexSwitchConfig
from sparsa.merge.methods.flexswitch import Choice, allocate, candidates, flexswitch, lloyd_table, nearest_code


def test_lloyd_table_two_levels_splits_the_clusters():
    mags = torch.tensor([1.0, 1.0, 2.0, 2.0, 10.0, 10.0])
    torch.testing.assert_close(lloyd_table(mags, 2, iters=10), torch.tensor([1.5, 10.0]))
    torch.testing.assert_close(lloyd_table(mags, 1, iters=10), torch.tensor([26.0 / 6]))
    assert torch.equal(lloyd_table(torch.zeros(0), 4, iters=3), torch.zeros(4))


def test_nearest_code_ties_go_to_the_lower_entry():
    codes = nearest_code(torch.tensor([0.0, 1.5, 2.0, 2.9, 9.0]), torch.tensor([1.0, 2.0, 3.0]))
    assert codes.tolist() == [0, 0, 1, 2, 2]


def test_candidates_cost_and_distortion_by_hand():
    tau = torch.tensor([4.0, -3.0, 0.5, -0.5, 0.25, 0.0, 0.0, 0.0])
    config = FlexSwitchConfig(keep_ratios=(0.0, 0.5), bits=(1, 2), encoding="bitmap")
    got = {(c.keep, c.bits): c for c in candidates(tau, config, "t")}
    assert set(got) == {(0.0, 1), (0.5, 1), (0.5, 2)}
    assert got[(0.0, 1)].distortion == pytest.approx(float((tau**2).sum()))
    assert got[(0.0, 1)].nbytes == 1 + 0 + 4  # bitmap of 8, no signs, one magnitude
    # keep half of each sign: {4, 0.5, 0.25} has 3 positives -> round(1.5) = 2: {4, 0.5}; negatives {-3}
    one = got[(0.5, 1)]
    assert one.nnz == 3
    level = (4 + 3 + 0.5) / 3
    assert one.distortion == pytest.approx((4 - level) ** 2 + (3 - level) ** 2 + (0.5 - level) ** 2 + 0.5**2 + 0.25**2)
    assert one.nbytes == 1 + 1 + 4
    two = got[(0.5, 2)]  # table {0.5, 3.5}: 4 and 3 share 3.5
    assert two.distortion == pytest.approx(0.25 + 0.25 + 0.5**2 + 0.25**2)
    assert two.nbytes == 1 + 1 + 1 + 8


def test_allocate_meets_the_budget_at_least_distortion():
    options = {"a": [Choice(0.0, 1, 4, 100.0, 0), Choice(0.5, 1, 20, 10.0, 5), Choice(0.5, 4, 60, 1.0, 5)],
               "b": [Choice(0.0, 1, 4, 5.0, 0), Choice(0.5, 1, 20, 1.0, 5)]}
    assert {n: c.nbytes for n, c in allocate(options, 80).items()} == {"a": 60, "b": 20}
    # a Lagrange multiplier reaches the hull points only: at 70 bytes {a: 60, b: 4} (distortion 6)
    # fits but lies off the hull; the smallest fitting multiplier (0.225 < lam <= 0.25) picks 20 + 20
    assert {n: c.nbytes for n, c in allocate(options, 70).items()} == {"a": 20, "b": 20}
    assert {n: c.nbytes for n, c in allocate(options, 30).items()} == {"a": 20, "b": 4}
    with pytest.raises(SparsaError, match="budget of 7 bytes is below the 8 bytes"):
        allocate(options, 7)


def regression(seed=0, n=256, d_in=16, d_out=8):
    """A linear model y = x W^T + b: base zero, the fine-tuned weights random; the loss is the
    mean squared error to the fine-tuned model's outputs on fixed batches."""
    g = torch.Generator().manual_seed(seed)
    base = {"w": torch.zeros(d_out, d_in), "b": torch.zeros(d_out), "gain": torch.tensor(1.0)}
    tau = {"w": torch.randn(d_out, d_in, generator=g) * torch.rand(d_out, d_in, generator=g) ** 4,
           "b": torch.randn(d_out, generator=g), "gain": torch.tensor(0.5)}
    x = torch.randn(n, d_in, generator=g)
    target = x @ tau["w"].T + tau["b"]

    def loss(weights, step):
        rows = torch.arange(32) + 32 * (step % (n // 32))
        return ((x[rows] @ weights["w"].T + weights["b"] - target[rows]) ** 2).mean()
    return base, tau, loss


def test_flexswitch_fits_the_budget_and_training_lowers_the_loss():
    base, tau, loss = regression()
    config = FlexSwitchConfig(budget_bits=4.0, steps=100, lr=1e-2)
    vector, summary = flexswitch(base, tau, loss, config)
    assert vector.bits_per_param <= 4.0 and summary["bits_per_param"] == vector.bits_per_param
    assert summary["loss_end"] < summary["loss_start"]
    assert torch.equal(vector.raw["gain"], torch.tensor(0.5))
    assert set(vector.masks) == {"w", "b"} and set(summary["allocation"]) == {"w", "b"}
    rebuilt = vector.decompress()
    untrained, _ = flexswitch(base, tau, loss, FlexSwitchConfig(budget_bits=4.0, steps=0))
    trained_err = float(loss({**base, **rebuilt}, 0))
    assert trained_err < float(loss({**base, **untrained.decompress()}, 0))


def test_flexswitch_gates_opened_past_the_budget_are_shrunk_back_into_it(monkeypatch):
    import sparsa.merge.methods.flexswitch as fs

    def open_every_gate(base, tau, gated, loss, config, progress):
        for g in gated.values():
            g.gates.data.fill_(-3.0)  # thresholds e^-3 of the allocation's: nearly every entry kept
        return 0.0, 0.0

    monkeypatch.setattr(fs, "train_gates", open_every_gate)
    base, tau, loss = regression(seed=1)
    vector, summary = fs.flexswitch(base, tau, loss, FlexSwitchConfig(budget_bits=3.0, steps=1))
    assert summary["fit_factor"] > 1.0
    assert vector.bits_per_param <= 3.0


def test_flexswitch_budget_below_the_smallest_choice_raises():
    base, tau, loss = regression()
    with pytest.raises(SparsaError, match="flexswitch: budget of .* raise budget_bits"):
        flexswitch(base, tau, loss, FlexSwitchConfig(budget_bits=0.05, steps=0))


@pytest.mark.parametrize("kw, message", [
    ({"budget_bits": 0}, "budget_bits=0: must be positive"),
    ({"bits": (1, 3)}, r"bits=\[1, 3\]: choose among 1, 2, 4"),
    ({"keep_ratios": (0.1, 1.5)}, r"keep_ratios=\[0.1, 1.5\]: each must be in \[0, 1\]"),
    ({"steps": -1}, "steps=-1: must be non-negative"),
    ({"temperature": 0}, "temperature=0: must be positive"),
    ({"rate_weight": -1}, "rate_weight=-1: must be non-negative"),
    ({"encoding": "rle"}, "encoding 'rle'"),
])
def test_flexswitch_config_bad_values_raise(kw, message):
    with pytest.raises(SparsaError, match=message):
        FlexSwitchConfig(**kw)


def test_flexswitch_training_sees_dropped_tensors_as_dropped(monkeypatch):
    """A tensor allocated keep 0 stores nothing, so the gate training must not see its task vector."""
    import sparsa.merge.methods.flexswitch as fs

    def drop_b(options, budget):
        return {n: next(c for c in opts if (c.keep == 0) == (n == "b")) for n, opts in options.items()}

    monkeypatch.setattr(fs, "allocate", drop_b)
    base, tau, loss = regression(seed=2)
    seen = []

    def spy(weights, step):
        seen.append({n: w.detach().clone() for n, w in weights.items()})
        return loss(weights, step)

    vector, _ = fs.flexswitch(base, tau, spy, FlexSwitchConfig(budget_bits=8.0, steps=2))
    assert vector.masks["b"].nnz == 0
    assert torch.equal(seen[0]["b"], base["b"])  # not base + tau
    assert torch.equal(seen[0]["gain"], base["gain"] + tau["gain"])  # raw scalars are stored whole
