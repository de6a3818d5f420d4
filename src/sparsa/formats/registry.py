"""Name -> format class table, filled by ``@register_format``."""

from sparsa.registry import Registry

FORMATS: Registry = Registry("format")


def register_format(name: str):
    """Class decorator: file the format under ``name`` (the name stored in ``sparsa.json``)."""

    def decorate(cls):
        FORMATS.add(name, cls)
        cls.format_name = name
        return cls

    return decorate


def get_format(name: str) -> type:
    """The format class called ``name``; a SparsaError lists the known ones otherwise."""
    return FORMATS.lookup(name)
