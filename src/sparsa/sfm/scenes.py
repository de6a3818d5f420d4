"""Where ``sparsa ba`` / ``sparsa sfm`` scenes come from and go to: a BAL file, a COLMAP model
directory, or ``synthetic:cameras=C,points=P,seed=S[,...]``."""

import os
from pathlib import Path

from sparsa.atomic import COLMAP_MODEL, check_output_dir, check_output_file
from sparsa.data.bal import read_bal, write_bal
from sparsa.data.colmap import read_colmap, write_colmap
from sparsa.data.colmap_update import check_update, update_colmap
from sparsa.data.scene import Scene
from sparsa.data.synthetic_scene import SyntheticSpec, synthetic_scene
from sparsa.errors import SparsaError
from sparsa.sfm.cameras import project

BAL_SUFFIXES = (".txt", ".bz2")


def load_scene(spec: str) -> tuple[Scene, Scene | None]:
    """(scene, ground truth or None) for a problem spec; validated before any compute."""
    if spec.startswith("synthetic:"):
        return synthetic_scene(SyntheticSpec.parse(spec), project)
    path = Path(spec)
    if path.is_dir():
        return read_colmap(path), None
    if not path.exists():
        raise SparsaError(f"{spec}: no such file or directory (expected a BAL file, a COLMAP model directory "
                          "or synthetic:cameras=C,points=P,seed=S)")
    if path.suffix not in BAL_SUFFIXES:
        raise SparsaError(f"{spec}: unknown problem file type; BAL files end in .txt or .bz2")
    return read_bal(path), None


def in_place(source: str | None, out: str) -> bool:
    """True when ``out`` is the COLMAP model directory ``source`` was read from."""
    return (source is not None and not source.startswith("synthetic:") and Path(source).is_dir()
            and Path(out).is_dir() and os.path.samefile(source, out))


def check_scene_output(out: str, *, source: str | None = None, text: bool = False, force: bool = False) -> None:
    """Before any compute, raise unless ``out`` may be written (see :mod:`sparsa.atomic`): a new BAL
    file, a new or sparsa-written COLMAP model directory, or ``source``'s own model (in place)."""
    if in_place(source, out):
        if check_update(out) == ".bin" and text:
            raise SparsaError(f"--text: {out} holds a binary COLMAP model; refining it in place keeps its format")
    elif Path(out).suffix in BAL_SUFFIXES:
        check_output_file(out, force=force)
    else:
        check_output_dir(out, COLMAP_MODEL, force=force)


def save_scene(scene: Scene, out: str, *, source: str | None = None, text: bool = False, force: bool = False) -> str:
    """Write ``scene`` to a BAL file (``.txt``/``.bz2``) or a COLMAP model directory, or into the
    model ``source`` when ``out`` is that directory (only the files sparsa writes change); returns ``out``."""
    if in_place(source, out):
        update_colmap(scene, out)
    elif Path(out).suffix in BAL_SUFFIXES:
        write_bal(scene, out, force=force)
    else:
        write_colmap(scene, out, binary=not text, force=force)
    return out
