"""Declared merge parameters: every registered method declares each keyword parameter's type and range."""

import inspect
import math
from dataclasses import fields

import pytest
import torch

from sparsa.errors import SparsaError
from sparsa.merge.config import TSWITCH_SPECS, TSwitchConfig
from sparsa.merge.params import REAL, UNIT, UNIT_OPEN, Param, check_values
from sparsa.merge.registry import METHODS, get_method, register_method


@pytest.mark.parametrize("spec, value, match", [
    (UNIT_OPEN, "lots", r"x='lots' is a str; expected a finite number in \[0, 1\)"),
    (UNIT_OPEN, True, "x=True is a bool"),
    (UNIT_OPEN, None, "x=None is a NoneType"),
    (UNIT_OPEN, 1.0, r"x=1.0: must be in \[0, 1\)"),
    (UNIT, math.nan, r"x=nan: must be a finite number in \[0, 1\]"),
    (REAL, -math.inf, "x=-inf: must be a finite number"),
    (Param(int, 1), 0, "x=0: must be >= 1"),
    (Param(int, 1), 2.0, "x=2.0 is a float; expected an integer >= 1"),
    (Param(float, 0.0, low_open=True), 0.0, "x=0.0: must be > 0"),
    (Param(str, choices=("a", "b")), "c", "x='c': must be one of 'a', 'b'"),
    (Param(str, choices=("a", "b")), 1, "x=1: must be one of 'a', 'b'"),
])
def test_param_check_bad_value_names_key_found_and_expected(spec, value, match):
    with pytest.raises(SparsaError, match="where: " + match):
        spec.check("x", value, "where")


@pytest.mark.parametrize("spec, value", [(UNIT, 0), (UNIT, 1.0), (REAL, -3), (Param(int, 1), 4),
                                         (Param(str, choices=("a",)), "a")])
def test_param_check_good_value_is_returned(spec, value):
    assert spec.check("x", value, "where") == value


def test_check_values_unknown_name_lists_the_known():
    with pytest.raises(SparsaError, match="w: unknown parameter 'y'; known: x"):
        check_values({"y": 1}, {"x": REAL}, "w")


def test_every_registered_method_declares_every_keyword_parameter():
    get_method("ties")  # registers the built-ins
    for method in METHODS.values():
        keywords = {p.name for p in inspect.signature(method.fn).parameters.values()
                    if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "generator"}
        assert set(method.specs) == keywords == set(method.params), method.name
        for name, default in method.params.items():
            method.specs[name].check(name, default, method.name)


def test_tswitch_specs_cover_every_config_field():
    assert set(TSWITCH_SPECS) == {f.name for f in fields(TSwitchConfig)}


def test_register_method_without_a_declared_range_raises():
    def merge(task_vectors, *, generator=None, lam: float = 0.3):
        return {}

    with pytest.raises(RuntimeError, match="declares \\[\\], its keyword parameters are \\['lam'\\]"):
        register_method("undeclared-test", reference_url="-", kind="static")(merge)
    assert "undeclared-test" not in METHODS


@pytest.mark.parametrize("params, match", [(dict(lam=math.nan), "merge method 'task_arithmetic': lam=nan"),
                                           (dict(lam="big"), "lam='big' is a str")])
def test_method_call_bad_parameter_value_raises_before_merging(params, match):
    taus = {"a": {"w": torch.ones(2)}, "b": {"w": torch.ones(2)}}
    with pytest.raises(SparsaError, match=match):
        get_method("task_arithmetic")(taus, **params)


def test_tswitch_config_non_number_drop_ratio_names_the_field():
    with pytest.raises(SparsaError, match="TSwitchConfig: drop_ratio='lots' is a str"):
        TSwitchConfig(drop_ratio="lots")
