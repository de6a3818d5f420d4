"""The one exception type users see: a bad flag, file, tensor or config."""


class SparsaError(ValueError):
    """User-facing error; its message is one line naming the file, tensor or flag at fault."""
