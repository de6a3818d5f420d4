"""Kernel layouts, built once per weight and reused while the weight's tensors are unchanged.

A kernel (CPU or GPU) may rearrange a format's arrays into the order its inner loop reads (see
:mod:`sparsa.kernels.cpu.tiles`). The layout is kept beside the format object (weakly: it goes
with the object), one per builder (a weight that prefills on one kernel and decodes on another
keeps both), and rebuilt when any of the format's tensors is replaced or modified in place
(torch's version counter), so a kernel never reads a stale copy.
"""

import weakref
from collections.abc import Callable

from sparsa.formats.base import Format

_LAYOUTS: "weakref.WeakKeyDictionary[Format, dict]" = weakref.WeakKeyDictionary()


def cached_layout(weight: Format, build: Callable[[Format], object]) -> object:
    """``build(weight)``, computed once per (weight object, builder, state of its tensors)."""
    built = _LAYOUTS.setdefault(weight, {})
    hit = built.get(build)
    if hit is not None and all(t._version == v for t, v in zip(hit[0], hit[1], strict=True)):
        return hit[2]
    tensors = tuple(weight.arrays().values())  # frozen: always these objects
    layout = build(weight)
    built[build] = (tensors, tuple(t._version for t in tensors), layout)
    return layout
