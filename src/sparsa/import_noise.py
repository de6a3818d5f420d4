"""Drop the known import-time log lines of optional peers that are not errors of the user's run.

With torchao installed (``make peers``), importing transformers imports torchao, which logs
"Failed to load <CUDA extension>.so" for each GPU-only library a CPU wheel cannot load, and
torch's pytree logs that torchao registers Enum constants the deprecated way. Both reach
stderr on every command, where a failing command must print one ``sparsa: error:`` line. Only
those records are dropped; every other record of those loggers passes.
"""

import logging

NOISE = {
    "torchao": lambda r: str(r.msg).startswith("Failed to load ") and ".so" in r.getMessage(),
    "torch.utils._pytree": lambda r: "is an Enum subclass and is now natively supported" in str(r.msg),
}


def quiet_import_noise() -> None:
    """Attach a filter for each logger in :data:`NOISE` (idempotent)."""
    for name, is_noise in NOISE.items():
        logger = logging.getLogger(name)
        if not any(getattr(f, "sparsa_noise", False) for f in logger.filters):
            drop = logging.Filter()
            drop.filter = lambda record, is_noise=is_noise: not is_noise(record)
            drop.sparsa_noise = True
            logger.addFilter(drop)
