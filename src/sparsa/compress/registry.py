"""Name -> compression method table, filled by ``@register_method``."""

from collections.abc import Callable
from dataclasses import dataclass

from sparsa.formats.base import Format
from sparsa.registry import Registry

# fn(W [out, in], config, where=fqn) -> format holding the compressed W
WeightFn = Callable[..., Format]


@dataclass(frozen=True)
class Method:
    """A registered method: its config class, its per-weight function, and, for methods that
    decide across layers (``auto``), a whole-model driver used instead of the per-weight loop."""

    name: str
    config_cls: type
    compress_weight: WeightFn | None
    reference_url: str
    driver: Callable | None = None


METHODS: Registry = Registry("compression method", asked="--method", listing="choose from")


def register_method(config_cls: type, *, reference_url: str = "", driver: bool = False):
    """Decorator: file ``fn(W, config, *, where[, H]) -> Format`` under ``config_cls.method``; with
    ``driver=True`` the function instead compresses a whole model:
    ``fn(model, config, method, windows, *, filter_fn, device, progress) -> totals``."""

    def decorate(fn):
        METHODS.add(config_cls.method, Method(config_cls.method, config_cls, None if driver else fn, reference_url,
                                              fn if driver else None))
        return fn

    return decorate


def get_method(name: str) -> Method:
    """The method called ``name``; a SparsaError lists the known ones otherwise."""
    return METHODS.lookup(name)
