"""The one exception type users see: a bad flag, file, tensor or config."""


class SparsaError(ValueError):
    """User-facing error; its message is one line naming the file, tensor or flag at fault."""


def bounds_text(low=None, high=None, *, low_open: bool = False, high_open: bool = False) -> str:
    """``in [0, 1)``, ``>= 1``, ``> 0``, ``<= 8`` or ``""`` (no bound)."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return ""
