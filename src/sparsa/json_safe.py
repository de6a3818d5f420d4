"""JSON that strict parsers accept: a non-finite float (NaN, inf) is written as ``null`` and named."""

import json
import math


def finite(obj, path: str = "") -> tuple[object, list[str]]:
    """``obj`` with every non-finite float replaced by None, and the dotted paths replaced."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, [path or "(value)"]
    if isinstance(obj, dict):
        out, bad = {}, []
        for key, value in obj.items():
            out[key], sub = finite(value, f"{path}.{key}" if path else str(key))
            bad += sub
        return out, bad
    if isinstance(obj, (list, tuple)):
        out, bad = [], []
        for i, value in enumerate(obj):
            clean, sub = finite(value, f"{path}[{i}]")
            out.append(clean)
            bad += sub
        return out, bad
    return obj, []


def dumps(obj: dict, **kwargs) -> str:
    """``json.dumps`` of a dict whose non-finite floats become null, listed under ``non_finite``."""
    clean, bad = finite(obj)
    if bad:
        clean["non_finite"] = bad
    return json.dumps(clean, allow_nan=False, **kwargs)
