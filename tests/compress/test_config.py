"""Tests for sparsa.compress.config: pattern parsing and the method configs' validation."""

import dataclasses
import re

import pytest

from sparsa.compress.config import VERSION, MagnitudeConfig, Pattern, RTNConfig, parse_pattern
from sparsa.errors import SparsaError


@pytest.mark.parametrize("text, expected", [
    ("unstructured", Pattern("unstructured")),
    ("2:4", Pattern("nm", n=2, m=4)),
    ("1:2", Pattern("nm", n=1, m=2)),
    ("4:8", Pattern("nm", n=4, m=8)),
    ("255:256", Pattern("nm", n=255, m=256)),
    ("block:1x16", Pattern("block", block=(1, 16))),
    ("block:16x1", Pattern("block", block=(16, 1))),
    ("block:32X32", Pattern("block", block=(32, 32))),
])
def test_parse_pattern_valid_text_returns_pattern(text, expected):
    assert parse_pattern(text) == expected


@pytest.mark.parametrize("text", ["unstructured", "2:4", "block:1x16", "block:4x1"])
def test_pattern_str_valid_pattern_prints_canonical_text(text):
    assert str(parse_pattern(text)) == text


@pytest.mark.parametrize("text", ["3x4", "block:0x4", "block:4x0", "block:-1x4", "block:axb", "block:4",
                                  "block:1x2x3", "block:", "2:4:8", "a:b", "", "Unstructured", "nm", "2/4"])
def test_parse_pattern_malformed_text_raises_with_examples(text):
    message = f"--pattern {text!r} is not unstructured, N:M (e.g. 2:4) or block:RxC (e.g. block:1x16)"
    with pytest.raises(SparsaError, match=f"^{re.escape(message)}$"):
        parse_pattern(text)


@pytest.mark.parametrize("text", ["4:2", "4:4", "0:4", "1:257", "-1:4"])
def test_parse_pattern_nm_out_of_order_raises(text):
    with pytest.raises(SparsaError, match=f"^{re.escape(f'--pattern {text}: needs 1 <= N < M <= 256')}$"):
        parse_pattern(text)


# -- MagnitudeConfig ------------------------------------------------------------------------

def test_magnitude_config_defaults_to_half_unstructured():
    config = MagnitudeConfig()
    assert config.sparsity == 0.5 and config.pattern == "unstructured" and config.method == "magnitude"


@pytest.mark.parametrize("pattern, sparsity", [("2:4", 0.5), ("1:4", 0.75), ("4:8", 0.5), ("1:3", 1 - 1 / 3),
                                               ("3:4", 0.25)])
def test_magnitude_config_nm_without_sparsity_implies_it(pattern, sparsity):
    assert MagnitudeConfig(pattern=pattern).sparsity == sparsity


def test_magnitude_config_nm_with_agreeing_sparsity_is_accepted():
    assert MagnitudeConfig(pattern="1:4", sparsity=0.75).sparsity == 0.75


def test_magnitude_config_nm_with_disagreeing_sparsity_raises():
    message = "--sparsity 0.6 disagrees with --pattern 2:4 (which means sparsity 0.5); drop --sparsity"
    with pytest.raises(SparsaError, match=f"^{re.escape(message)}$"):
        MagnitudeConfig(pattern="2:4", sparsity=0.6)


@pytest.mark.parametrize("pattern", ["unstructured", "block:1x16"])
def test_magnitude_config_non_nm_without_sparsity_defaults_to_half(pattern):
    assert MagnitudeConfig(pattern=pattern).sparsity == 0.5


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.999])
def test_magnitude_config_sparsity_in_range_is_kept(sparsity):
    assert MagnitudeConfig(sparsity=sparsity, pattern="block:4x4").sparsity == sparsity


@pytest.mark.parametrize("sparsity", [1.0, 1.5, -0.1])
def test_magnitude_config_sparsity_out_of_range_raises(sparsity):
    with pytest.raises(SparsaError, match=f"^{re.escape(f'--sparsity {sparsity} is outside [0, 1)')}$"):
        MagnitudeConfig(sparsity=sparsity)


def test_magnitude_config_bad_pattern_raises():
    with pytest.raises(SparsaError, match=re.escape("--pattern '3x4' is not unstructured")):
        MagnitudeConfig(pattern="3x4")


def test_magnitude_config_parsed_pattern_parses_text():
    assert MagnitudeConfig(pattern="block:2x8").parsed_pattern == Pattern("block", block=(2, 8))


def test_magnitude_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        MagnitudeConfig().sparsity = 0.1


def test_magnitude_config_to_dict_holds_method_version_and_fields():
    assert MagnitudeConfig(pattern="2:4").to_dict() == {"method": "magnitude", "version": VERSION,
                                                        "sparsity": 0.5, "pattern": "2:4"}


# -- RTNConfig ------------------------------------------------------------------------------

def test_rtn_config_defaults_to_4_bits_group_128():
    config = RTNConfig()
    assert (config.bits, config.group_size, config.method) == (4, 128, "rtn")


@pytest.mark.parametrize("bits", range(2, 9))
def test_rtn_config_bits_in_range_is_accepted(bits):
    assert RTNConfig(bits=bits).bits == bits


@pytest.mark.parametrize("bits", [0, 1, 9, 16])
def test_rtn_config_bits_out_of_range_raises(bits):
    with pytest.raises(SparsaError, match=f"^--bits {bits} is outside 2\\.\\.8$"):
        RTNConfig(bits=bits)


@pytest.mark.parametrize("group_size", [0, -32])
def test_rtn_config_nonpositive_group_size_raises(group_size):
    with pytest.raises(SparsaError, match=f"^--group-size {group_size} must be positive$"):
        RTNConfig(group_size=group_size)


def test_rtn_config_to_dict_holds_method_version_and_fields():
    assert RTNConfig(bits=3, group_size=64).to_dict() == {"method": "rtn", "version": VERSION, "bits": 3,
                                                          "group_size": 64, "symmetric": False}


# -- from_flags -----------------------------------------------------------------------------

def test_rtn_from_flags_unset_flags_are_ignored():
    config = RTNConfig.from_flags(bits=3, group_size=None, sparsity=None, pattern=None)
    assert config == RTNConfig(bits=3, group_size=128)


def test_magnitude_from_flags_given_flags_build_config():
    config = MagnitudeConfig.from_flags(sparsity=None, pattern="2:4", bits=None, group_size=None)
    assert config == MagnitudeConfig(pattern="2:4") and config.sparsity == 0.5


@pytest.mark.parametrize("flag, value, text", [("sparsity", 0.5, "--sparsity"), ("pattern", "2:4", "--pattern")])
def test_rtn_from_flags_magnitude_flag_raises(flag, value, text):
    with pytest.raises(SparsaError, match=f"^--method rtn does not take {text}$"):
        RTNConfig.from_flags(bits=4, **{flag: value})


@pytest.mark.parametrize("flag, value, text", [("bits", 4, "--bits"), ("group_size", 64, "--group-size")])
def test_magnitude_from_flags_rtn_flag_raises(flag, value, text):
    with pytest.raises(SparsaError, match=f"^--method magnitude does not take {text}$"):
        MagnitudeConfig.from_flags(**{flag: value})


def test_rtn_from_flags_invalid_value_raises_config_error():
    with pytest.raises(SparsaError, match="--bits 1 is outside 2..8"):
        RTNConfig.from_flags(bits=1)


def test_spqr_config_recipes_fill_unset_threshold_and_damping():
    from sparsa.compress.config import SPQR_RECIPES, SpQRConfig

    assert (SpQRConfig(bits=3).outlier_threshold, SpQRConfig(bits=3).percdamp) == SPQR_RECIPES[3] == (0.3, 0.01)
    assert (SpQRConfig(bits=4).outlier_threshold, SpQRConfig(bits=4).percdamp) == SPQR_RECIPES[4] == (0.2, 1.0)
    assert SpQRConfig(bits=2).outlier_threshold == 0.3 and SpQRConfig(bits=8).percdamp == 1.0
    explicit = SpQRConfig(bits=3, outlier_threshold=0.2, percdamp=1.0)
    assert (explicit.outlier_threshold, explicit.percdamp) == (0.2, 1.0)
    assert SpQRConfig(bits=4).to_dict()["outlier_threshold"] == 0.2  # the manifest records the resolved value


@pytest.mark.parametrize("kwargs, message", [
    ({"nsamples": 0}, "--nsamples 0 must be at least 1"), ({"seqlen": 1}, "--seqlen 1 must be at least 2"),
    ({"percdamp": 0.0}, "--percdamp 0.0 must be positive"), ({"outlier_threshold": -1.0}, "--outlier-threshold -1.0"),
    ({"stat_bits": 9}, "--stat-bits 9 is outside 2..8"),
])
def test_spqr_config_bad_values_raise(kwargs, message):
    from sparsa.compress.config import SpQRConfig

    with pytest.raises(SparsaError, match=re.escape(message)):
        SpQRConfig(**kwargs)
