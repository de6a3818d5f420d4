"""The side-branch switch against the switch bank's rebuilt weights."""

import pytest
import torch
from torch import nn

from sparsa.errors import SparsaError
from sparsa.formats.sign_mask import SignMask
from sparsa.merge.bank import SwitchBank
from sparsa.merge.config import TSwitchConfig
from sparsa.merge.switch_linear import Switch, SwitchedLinear, sparse_delta
from sparsa.merge.methods.tswitch import compress_task_vector


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 3, bias=False))


def vectors():
    base = tiny().state_dict()
    g = torch.Generator().manual_seed(1)
    out = {}
    for t in ("a", "b"):
        tau = {n: torch.randn(v.shape, generator=g) * 0.3 for n, v in base.items()}
        out[t] = compress_task_vector(tau, TSwitchConfig(drop_ratio=0.5))
    return base, out


def test_switch_matches_the_bank_for_one_task_and_a_mixture():
    base, vecs = vectors()
    bank = SwitchBank(base, vecs)
    model = tiny()
    switch = Switch(model, vecs)
    x = torch.randn(5, 6)
    for w in ({"a": 1.0}, {"b": 1.0}, {"a": 0.3, "b": 0.7}, {}):
        switch.set(w)
        ref = tiny()
        ref.load_state_dict(bank.weights(w))
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    assert sum(isinstance(m, SwitchedLinear) for m in model.modules()) == 2


def test_switch_leaves_base_linear_weights_untouched():
    base, vecs = vectors()
    model = tiny()
    switch = Switch(model, vecs)
    switch.set({"a": 1.0})
    assert torch.equal(model[0].linear.weight, base["0.weight"])


def test_sparse_delta_stores_only_the_nonzeros():
    m = SignMask.from_ternary(torch.tensor([[1, 0, 0], [0, -1, 0]]), [0.5, 2.0], codes=torch.tensor([1, 0]))
    d = sparse_delta(m)
    assert d.layout == torch.sparse_csr and d.values().tolist() == [2.0, -0.5]
    assert torch.equal(d.to_dense(), m.to_dense())


def test_switch_bad_input_raises():
    base, vecs = vectors()
    with pytest.raises(SparsaError, match="switch: no task vectors"):
        Switch(tiny(), {})
    bad = {"a": vecs["a"]}
    bad["a"].raw["extra"] = torch.tensor(1.0)
    with pytest.raises(SparsaError, match="switch: task 'a' and the model differ at tensor 'extra'"):
        Switch(tiny(), bad)
    switch = Switch(tiny(), vectors()[1])
    with pytest.raises(SparsaError, match="switch: unknown task 'c'"):
        switch.set({"c": 1.0})
