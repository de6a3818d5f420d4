"""Assertions shared by the scene reader/writer tests (imported as a plain module)."""

import re
from dataclasses import fields
from pathlib import Path

import torch

from sparsa.data.scene import Scene


def assert_same_scene(a: Scene, b: Scene) -> None:
    """Every field equal; float tensors bit-exact (signed zeros included)."""
    assert (a.model, a.rotation_format, a.image_names) == (b.model, b.rotation_format, b.image_names)
    for f in fields(Scene):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if not isinstance(x, torch.Tensor) and not isinstance(y, torch.Tensor):
            continue
        assert x is not None and y is not None, f.name
        assert x.dtype == y.dtype and torch.equal(x, y), f.name
        if x.is_floating_point():
            assert torch.equal(x.view(torch.int64), y.view(torch.int64)), f.name


def error_at(path: Path, text: str) -> str:
    """A pytest ``match`` pattern: the message starts with the path and contains ``text``."""
    return re.escape(str(path)) + ": .*" + re.escape(text)
