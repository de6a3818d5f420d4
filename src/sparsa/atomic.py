"""The one place sparsa's outputs are checked and written; nothing a user made is ever replaced.

The rule, for every ``-o``:
  * a path that does not exist is created (its missing parent directories too);
  * an existing path is replaced only when it is a directory that sparsa wrote: its manifest
    parses, names the same kind of output (:class:`OutputKind`), and the directory holds nothing
    but the files that manifest lists;
  * anything else stops the run before any compute, with one error naming the path and the first
    entry that is not sparsa's; ``force=True`` (``--force``) replaces such a directory, or a file
    with a file, on purpose.

Writes are built in a hidden temporary sibling and swapped into place at the end, in one
``renameat2(RENAME_EXCHANGE)`` where the platform has it (else two renames, the first undone on
failure), with Ctrl-C held back during the swap: a failure or an interrupt leaves either the old
output or the new one, whole, and no temporary behind.
"""

import ctypes
import errno
import json
import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sparsa.errors import SparsaError

RENAME_EXCHANGE = 2  # linux/fs.h: swap two paths atomically
AT_FDCWD = -100


@dataclass(frozen=True)
class OutputKind:
    """A kind of output directory: its manifest file and the tag that manifest carries.

    The manifest is a JSON object with ``"sparsa_output": tag`` and ``"files"``: the paths, relative
    to the directory, of every other file in it.
    """

    tag: str
    manifest: str
    description: str


CHECKPOINT = OutputKind("checkpoint", "sparsa.json", "sparsa checkpoint")
MERGE = OutputKind("merge", "merge.json", "sparsa merge output")
COLMAP_MODEL = OutputKind("colmap-model", "sparsa-colmap.json", "COLMAP model written by sparsa")
KINDS = (CHECKPOINT, MERGE, COLMAP_MODEL)
FORCE_HINT = "choose another -o, or add --force to replace it"


# -- checks, before any compute ------------------------------------------------------------------
def check_output_dir(path, kind: OutputKind, *, force: bool = False) -> None:
    """Raise a :class:`SparsaError` unless writing the directory ``path`` may go ahead."""
    path = Path(path)
    if path.is_symlink():
        raise SparsaError(f"{path}: is a symbolic link; give the directory itself as -o")
    if not path.exists():
        _check_parent(path)
        return
    if not path.is_dir():
        raise SparsaError(f"{path}: exists and is not a directory; sparsa writes a directory there, "
                          "so choose another -o")
    if force:
        return
    other = next((k for k in KINDS if k != kind and _listed_files(path, k) is not None), None)
    if other is not None:
        raise SparsaError(f"{path}: is a {other.description}, not a {kind.description}; {FORCE_HINT}")
    foreign = foreign_entries(path, kind)
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise SparsaError(f"{path}: holds {foreign[0]}{more}, which sparsa did not write; {FORCE_HINT}")


def check_output_file(path, *, force: bool = False) -> None:
    """Raise unless the file ``path`` is absent (and creatable), or a file ``force`` replaces."""
    path = Path(path)
    if path.is_symlink() or path.exists():
        if path.is_dir() and not path.is_symlink():
            raise SparsaError(f"{path}: is a directory; sparsa writes a file there, so choose another -o")
        if not force:
            raise SparsaError(f"{path}: exists; sparsa never replaces a file it cannot tell it wrote; {FORCE_HINT}")
        if not path.is_file() or path.is_symlink():
            raise SparsaError(f"{path}: is not a regular file; choose another -o")
        return
    _check_parent(path)


def foreign_entries(path: Path, kind: OutputKind) -> list[str]:
    """Entries under the directory ``path`` (sorted, relative) that its ``kind`` manifest does not
    list; every entry when there is no valid manifest."""
    entries = _entries(path)
    listed = _listed_files(path, kind)
    if listed is None:
        return entries
    allowed = set(listed) | {kind.manifest}
    allowed |= {str(parent) for name in listed for parent in Path(name).parents if str(parent) != "."}
    return [e for e in entries if e not in allowed]


def _listed_files(path: Path, kind: OutputKind) -> list[str] | None:
    """The ``files`` of a valid ``kind`` manifest in ``path``, or None."""
    try:
        manifest = json.loads((path / kind.manifest).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("sparsa_output") != kind.tag:
        return None
    files = manifest.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return files


def _entries(path: Path) -> list[str]:
    """Every file, link and directory under ``path``, relative, sorted; links are not followed."""
    out = []
    for root, dirs, files in os.walk(path):
        rel = Path(root).relative_to(path)
        out += [(rel / name).as_posix() for name in dirs + files]
    return sorted(out)


def _check_parent(path: Path) -> None:
    """The nearest existing ancestor of ``path`` is a directory in which sparsa can create entries."""
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise SparsaError(f"{path}: {parent} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".sparsa-probe-", dir=parent))
    except OSError as err:
        raise SparsaError(f"{path}: cannot write in {parent} ({err.strerror or err})") from None


# -- writes ------------------------------------------------------------------------------------------
@contextmanager
def output_directory(path, kind: OutputKind, *, force: bool = False):
    """Yield ``(tmp, manifest)``: write the output's files into the directory ``tmp`` and fill the
    dict ``manifest``; on success ``manifest`` gains ``sparsa_output`` and ``files``, is written as
    ``kind.manifest``, and ``tmp`` replaces ``path`` (checked again first: the rule may have
    changed during the run)."""
    path = Path(path)
    check_output_dir(path, kind, force=force)
    manifest = {}
    with atomic_directory(path) as tmp:
        yield tmp, manifest
        files = [e for e in _entries(tmp) if (tmp / e).is_file() and e != kind.manifest]
        manifest.update(sparsa_output=kind.tag, files=files)
        (tmp / kind.manifest).write_text(json.dumps(manifest, indent=2, allow_nan=False))
        check_output_dir(path, kind, force=force)


@contextmanager
def atomic_directory(dest):
    """Yield a fresh temporary directory beside ``dest``; on success it replaces ``dest`` whole.

    On any error or interrupt the temporary directory is removed, the parents this call created
    are removed, and ``dest`` is left as it was. An ``OSError`` becomes a :class:`SparsaError`
    naming ``dest`` (never the temporary name).
    """
    dest = Path(dest)
    created = _make_parents(dest.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; give the result the usual permissions
    except OSError as err:
        _remove_parents(created)
        raise SparsaError(f"{dest}: cannot write ({err.strerror or err})") from None
    try:
        try:
            yield tmp
            _usual_permissions(tmp)
            with held_signals():
                _swap_in(tmp, dest)
        except OSError as err:
            raise SparsaError(f"{dest}: cannot write ({err.strerror or err})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_parents(created)
        raise


@contextmanager
def output_file(path, *, force: bool = False):
    """Yield a temporary sibling of the file ``path`` to write; on success it is renamed into place
    (Ctrl-C held back), on failure removed with any parent directory made for it."""
    path = Path(path)
    check_output_file(path, force=force)
    created = _make_parents(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    except OSError as err:
        _remove_parents(created)
        raise SparsaError(f"{path}: cannot write ({err.strerror or err})") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        with held_signals():
            os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        _remove_parents(created)
        if isinstance(err, OSError):
            raise SparsaError(f"{path}: cannot write ({err.strerror or err})") from None
        raise


def write_file(path, data: bytes, *, force: bool = False) -> None:
    """Write ``data`` to the file ``path`` through a temporary sibling renamed into place."""
    with output_file(path, force=force) as tmp:
        tmp.write_bytes(data)


def replace_files(directory, contents: dict[str, bytes]) -> None:
    """Rewrite the named files of the existing ``directory`` and leave every other entry as it is.

    Each file is written to a temporary sibling first; the renames into place run back to back
    with Ctrl-C held back, so an interrupt leaves the old files or the new ones.
    """
    directory = Path(directory)
    staged = {}
    try:
        for name, data in contents.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.tmp-", dir=directory)
            staged[name] = tmp
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            target = directory / name
            mode = target.stat().st_mode & 0o7777 if target.is_file() else 0o666 & ~_umask()
            os.chmod(tmp, mode)
        with held_signals():
            for name, tmp in staged.items():
                os.replace(tmp, directory / name)
    except BaseException as err:
        for tmp in staged.values():
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise SparsaError(f"{directory}: cannot write ({err.strerror or err})") from None
        raise


def _swap_in(tmp: Path, dest: Path) -> None:
    """Put ``tmp`` at ``dest``; an existing ``dest`` is removed only once ``tmp`` stands there."""
    if not os.path.lexists(dest):
        os.rename(tmp, dest)
        return
    if _exchange(tmp, dest):  # tmp now holds the old output
        shutil.rmtree(tmp, ignore_errors=True)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    os.rename(dest, trash / "old")
    try:
        os.rename(tmp, dest)
    except BaseException:
        os.rename(trash / "old", dest)
        os.rmdir(trash)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one ``renameat2(RENAME_EXCHANGE)``; False where the platform cannot."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _libc():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        return libc
    except (OSError, AttributeError):
        return None


@contextmanager
def held_signals():
    """Hold SIGINT and SIGTERM back for the block and deliver them after it (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught, previous = [], {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)


def _make_parents(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; return the ones created, deepest first."""
    missing = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    try:
        for d in reversed(missing):
            d.mkdir()
    except OSError as err:
        _remove_parents([d for d in missing if d.exists()])
        raise SparsaError(f"{missing[0]}: cannot create ({err.strerror or err})") from None
    return missing


def _remove_parents(created: list[Path]) -> None:
    for d in created:
        try:
            d.rmdir()
        except OSError:
            return


def _usual_permissions(directory: Path) -> None:
    """Files 0666 and directories 0777 less the umask (some writers create 0600 files)."""
    umask = _umask()
    for root, dirs, files in os.walk(directory):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                os.chmod(p, 0o666 & ~umask)
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~umask)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
