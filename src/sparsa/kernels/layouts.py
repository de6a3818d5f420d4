"""Kernel layouts, built once per weight and reused while the weight's tensors are unchanged.

A kernel (CPU or GPU) may rearrange a format's arrays into the order its inner loop reads (see
:mod:`sparsa.kernels.cpu.tiles`). The layout is kept beside the format object (weakly: it goes
with the object) and rebuilt when any of the format's tensors is replaced or modified in
place (torch's version counter), so a kernel never reads a stale copy.
"""

import weakref
from collections.abc import Callable

from sparsa.formats.base import Format

_LAYOUTS: "weakref.WeakKeyDictionary[Format, tuple]" = weakref.WeakKeyDictionary()


def cached_layout(weight: Format, build: Callable[[Format], object]) -> object:
    """``build(weight)``, computed once per (weight object, state of its tensors)."""
    hit = _LAYOUTS.get(weight)
    if hit is not None and hit[0] is build and all(t._version == v for t, v in zip(hit[1], hit[2], strict=True)):
        return hit[3]
    tensors = tuple(getattr(weight, name) for name in weight.ARRAYS)  # frozen: always these objects
    layout = build(weight)
    _LAYOUTS[weight] = (build, tensors, tuple(t._version for t in tensors), layout)
    return layout
