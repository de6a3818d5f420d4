import importlib.util
import logging
import subprocess
import sys

import pytest

import sparsa  # noqa: F401  (installs the filters)


def record(name: str, msg: str, *args) -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None)


def test_known_peer_import_lines_are_dropped_and_others_pass():
    torchao, pytree = logging.getLogger("torchao"), logging.getLogger("torch.utils._pytree")
    assert not torchao.filter(record("torchao", "Failed to load /x/_C_mxfp8.so: Could not load this library"))
    assert torchao.filter(record("torchao", "Failed to quantize layer %s", "q_proj"))
    assert not pytree.filter(record("torch.utils._pytree", "%s is an Enum subclass and is now natively supported "
                                    "by torch.compile as an opaque value type.", "<enum 'X'>"))
    assert pytree.filter(record("torch.utils._pytree", "something else"))


def test_filters_are_installed_once():
    sparsa.quiet_import_noise()
    assert sum(getattr(f, "sparsa_noise", False) for f in logging.getLogger("torchao").filters) == 1


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed")
def test_importing_transformers_with_torchao_after_sparsa_writes_nothing_to_stderr():
    out = subprocess.run([sys.executable, "-c", "import sparsa, transformers, torchao"], capture_output=True,
                         text=True, check=True)
    assert out.stderr == ""
