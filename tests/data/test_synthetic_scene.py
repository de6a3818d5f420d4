"""``synthetic:`` specs: each key parsed once, of its type and range; scenes too big refused before allocating."""

import pytest

from sparsa.data import synthetic_scene as synthetic
from sparsa.data.synthetic_scene import SyntheticSpec, memory_bytes, synthetic_scene
from sparsa.errors import SparsaError
from sparsa.sfm.cameras import project


def test_synthetic_spec_parse_scientific_integer_parses_exactly():
    spec = SyntheticSpec.parse("synthetic:cameras=6,points=5e1,seed=1e0")
    assert (spec.cameras, spec.points, spec.seed) == (6, 50, 1)


@pytest.mark.parametrize("text, message", [
    ("cameras=5,cameras=6,points=50", "cameras is given twice; give each key once"),
    ("cameras=6,points=50,noise=0.5,noise=1", "noise is given twice"),
    ("cameras=6,points=50,track=abc", "track=abc: expected an integer >= 2"),
    ("cameras=6.5,points=50", "cameras=6.5: expected an integer >= 2"),
    ("cameras=6,points=-3", "points=-3: expected an integer >= 1"),
    ("cameras=6,points=50,seed=-1", "seed=-1: expected an integer >= 0"),
    ("cameras=6,points=1e30", "points=1e30: expected an integer >= 1 and < 2**63"),
    ("cameras=6,points=50,noise=nan", "noise=nan: expected a finite number >= 0"),
    ("cameras=6,points=50,noise=-1", "noise=-1: expected a finite number >= 0"),
    ("cameras=6,points=50,outliers=inf", "outliers=inf: expected a finite number >= 0 and < 1"),
    ("cameras=6,points=50,outliers=1", "outliers=1: expected a finite number >= 0 and < 1"),
])
def test_synthetic_spec_parse_bad_value_names_the_key(text, message):
    with pytest.raises(SparsaError, match=message.replace("*", r"\*").replace("+", r"\+")):
        SyntheticSpec.parse("synthetic:" + text)


def test_memory_bytes_counts_cameras_points_observations_and_one_chunk():
    spec = SyntheticSpec(cameras=10, points=1000, track=4)
    observations, pairs = 1000 * 3, 1000 * 10  # (2 + track) / 2 views per point; all pairs fit one chunk
    assert memory_bytes(spec) == (10 * synthetic.CAMERA_BYTES + 1000 * synthetic.POINT_BYTES
                                  + observations * synthetic.OBSERVATION_BYTES + pairs * synthetic.PAIR_BYTES)


def test_synthetic_scene_over_available_memory_raises_with_need_and_have(monkeypatch):
    monkeypatch.setattr(synthetic, "available_memory_bytes", lambda: 2**30)
    with pytest.raises(SparsaError, match=r"needs about 3\.6 GiB of memory to generate .* but 1\.0 GiB is available"):
        synthetic_scene(SyntheticSpec(cameras=2, points=6_000_000), project)


def test_synthetic_scene_more_cameras_than_observations_raises_before_allocating():
    with pytest.raises(SparsaError, match="1000 cameras but at most points x track = 60 observations"):
        synthetic_scene(SyntheticSpec(cameras=1000, points=5), project)


def test_available_memory_bytes_is_positive():
    assert synthetic.available_memory_bytes() > 0
