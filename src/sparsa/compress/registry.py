"""Name -> compression method table, filled by ``@register_method``."""

from collections.abc import Callable
from dataclasses import dataclass

from sparsa.errors import SparsaError
from sparsa.formats.base import Format

# fn(W [out, in], config, where=fqn) -> format holding the compressed W
WeightFn = Callable[..., Format]


@dataclass(frozen=True)
class Method:
    """A registered method: its config class and the per-weight function (data-free methods)."""

    name: str
    config_cls: type
    compress_weight: WeightFn
    reference_url: str


METHODS: dict[str, Method] = {}


def register_method(config_cls: type, *, reference_url: str = ""):
    """Decorator: file ``fn(W, config, *, where) -> Format`` under ``config_cls.method``."""

    def decorate(fn: WeightFn) -> WeightFn:
        METHODS[config_cls.method] = Method(config_cls.method, config_cls, fn, reference_url)
        return fn

    return decorate


def get_method(name: str) -> Method:
    """The method called ``name``; a SparsaError lists the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise SparsaError(f"unknown --method {name!r}; choose from {', '.join(sorted(METHODS))}") from None
