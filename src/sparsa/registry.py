"""The one registry type: a name -> entry table that every registry of the package is (formats,
compression methods, merge methods, linear kernels). Registering a name twice is a programming
error (RuntimeError, at import); looking up an unknown name is the user's (a SparsaError that
lists the known names)."""

from sparsa.errors import SparsaError


class Registry(dict):
    """A dict filled by :meth:`add` and read by :meth:`lookup`.

    Args:
        noun: what an entry is, for messages (``"format"``, ``"merge method"``).
        asked: how the user names one in a lookup error (default ``noun``; e.g. ``"--method"``).
        listing: the words before the known names in a lookup error (``"known:"``, ``"choose from"``).
    """

    def __init__(self, noun: str, *, asked: str | None = None, listing: str = "known:"):
        super().__init__()
        self.noun, self.asked, self.listing = noun, asked or noun, listing

    def add(self, name, entry) -> None:
        """File ``entry`` under ``name``; RuntimeError if the name is taken."""
        if name in self:
            raise RuntimeError(f"{self.noun} {name!r} registered twice")
        self[name] = entry

    def lookup(self, name):
        """The entry of ``name``; a SparsaError listing the known names if there is none."""
        try:
            return self[name]
        except KeyError:
            raise SparsaError(f"unknown {self.asked} {name!r}; {self.listing} {', '.join(sorted(self))}") from None
