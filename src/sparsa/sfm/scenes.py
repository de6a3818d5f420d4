"""Where ``sparsa ba`` / ``sparsa sfm`` scenes come from and go to: a BAL file, a COLMAP model
directory, or ``synthetic:cameras=C,points=P,seed=S[,...]``."""

from pathlib import Path

from sparsa.data.bal import read_bal, write_bal
from sparsa.data.colmap import read_colmap, write_colmap
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


def save_scene(scene: Scene, out: str, *, text: bool = False) -> str:
    """Write ``scene`` to a BAL file (``.txt``/``.bz2``) or a COLMAP model directory; returns ``out``."""
    if Path(out).suffix in BAL_SUFFIXES:
        write_bal(scene, out)
    else:
        write_colmap(scene, out, binary=not text)
    return out
