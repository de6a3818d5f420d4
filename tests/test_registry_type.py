"""The one registry type, and that every registry of the package is one."""

import pytest

from sparsa.compress.registry import METHODS as COMPRESS_METHODS
from sparsa.compress.registry import register_method
from sparsa.errors import SparsaError
from sparsa.formats.registry import FORMATS
from sparsa.kernels.dispatch import LINEAR_KERNELS
from sparsa.merge.registry import METHODS as MERGE_METHODS
from sparsa.registry import Registry


def test_registry_refuses_a_second_entry_and_names_the_known_ones():
    table = Registry("widget", asked="--widget", listing="choose from")
    table.add("b", 2)
    table.add("a", 1)
    with pytest.raises(RuntimeError, match="widget 'a' registered twice"):
        table.add("a", 3)
    assert table.lookup("a") == 1 and dict(table) == {"a": 1, "b": 2}
    with pytest.raises(SparsaError, match="^unknown --widget 'c'; choose from a, b$"):
        table.lookup("c")
    with pytest.raises(SparsaError, match="^unknown thing 'x'; known: $"):
        Registry("thing").lookup("x")


def test_every_registry_is_the_one_type():
    assert all(isinstance(t, Registry) for t in (FORMATS, COMPRESS_METHODS, MERGE_METHODS, LINEAR_KERNELS))


def test_compress_methods_refuse_a_second_registration():
    config_cls = COMPRESS_METHODS.lookup("rtn").config_cls
    with pytest.raises(RuntimeError, match="compression method 'rtn' registered twice"):
        register_method(config_cls)(lambda W, config, *, where: None)
    assert COMPRESS_METHODS.lookup("rtn").config_cls is config_cls
