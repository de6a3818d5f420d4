"""Small synthetic scenes shared by the sfm tests."""

import pytest

from sparsa.data.synthetic_scene import SyntheticSpec, synthetic_scene
from sparsa.sfm.cameras import project


def make_scene(spec: str):
    return synthetic_scene(SyntheticSpec.parse(spec), project)


@pytest.fixture(scope="session")
def small_scene():
    """(start, truth) with 6 cameras, 80 points, SIMPLE_RADIAL."""
    return make_scene("synthetic:cameras=6,points=80,seed=3")


@pytest.fixture(scope="session")
def scene_factory():
    """``make(spec) -> (start, truth)`` for a synthetic spec string."""
    return make_scene
