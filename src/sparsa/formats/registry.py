"""Name -> format class table, filled by ``@register_format``."""

from sparsa.errors import SparsaError

FORMATS: dict[str, type] = {}


def register_format(name: str):
    """Class decorator: file the format under ``name`` (the name stored in ``sparsa.json``)."""

    def decorate(cls):
        if name in FORMATS:
            raise RuntimeError(f"format {name!r} registered twice")
        cls.format_name = name
        FORMATS[name] = cls
        return cls

    return decorate


def get_format(name: str) -> type:
    """The format class called ``name``; a SparsaError lists the known ones otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise SparsaError(f"unknown format {name!r}; known: {', '.join(sorted(FORMATS))}") from None
