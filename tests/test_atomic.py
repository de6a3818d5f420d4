"""The output rule of sparsa.atomic: what may be replaced, and replacement that cannot lose the old copy."""

import json
import os
import signal
import stat

import pytest

from sparsa import atomic
from sparsa.atomic import (CHECKPOINT, MERGE, check_output_dir, check_output_file, output_directory,
                           replace_files, write_file)
from sparsa.errors import SparsaError


def write_output(path, files=None, kind=CHECKPOINT, **kw):
    with output_directory(path, kind, **kw) as (tmp, manifest):
        for name, text in (files or {"a.txt": "new"}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
        manifest["note"] = "test"
    return manifest


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_output_directory_absent_path_is_created_with_parents_and_manifest(tmp_path):
    manifest = write_output(tmp_path / "x" / "y" / "out", {"a.txt": "1", "sub/b.txt": "2"})
    out = tmp_path / "x" / "y" / "out"
    assert manifest["files"] == ["a.txt", "sub/b.txt"] and manifest["sparsa_output"] == "checkpoint"
    assert json.loads((out / "sparsa.json").read_text()) == manifest
    assert listing(tmp_path) == ["x", "x/y", "x/y/out", "x/y/out/a.txt", "x/y/out/sparsa.json",
                                 "x/y/out/sub", "x/y/out/sub/b.txt"]


def test_output_directory_earlier_output_and_empty_directory_are_replaced(tmp_path):
    write_output(tmp_path / "out", {"old.txt": "old", "sub/c.txt": "x"})
    write_output(tmp_path / "out", {"a.txt": "new"})
    assert listing(tmp_path / "out") == ["a.txt", "sparsa.json"]
    (tmp_path / "empty").mkdir()
    write_output(tmp_path / "empty")
    assert (tmp_path / "empty" / "a.txt").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["empty", "out"]


@pytest.mark.parametrize("manifest_text", ["{}", "not json", '{"sparsa_output": "checkpoint"}',
                                           '{"sparsa_output": "checkpoint", "files": ["a.txt"]}'])
def test_check_output_dir_user_file_beside_a_manifest_refuses_naming_it(tmp_path, manifest_text):
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "notes.txt").write_text("keep")
    (tmp_path / "u" / "sparsa.json").write_text(manifest_text)
    with pytest.raises(SparsaError, match=f"^{tmp_path / 'u'}: holds notes.txt.*which sparsa did not write"):
        write_output(tmp_path / "u")
    assert (tmp_path / "u" / "notes.txt").read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == ["u"]


def test_check_output_dir_earlier_output_with_added_notes_refuses(tmp_path):
    write_output(tmp_path / "out")
    (tmp_path / "out" / "results").mkdir()
    (tmp_path / "out" / "results" / "mine.csv").write_text("1,2")
    with pytest.raises(SparsaError, match=r"holds results \(and 1 more\), which sparsa did not write"):
        write_output(tmp_path / "out")
    assert (tmp_path / "out" / "results" / "mine.csv").read_text() == "1,2"


def test_check_output_dir_other_kind_refuses_naming_it(tmp_path):
    write_output(tmp_path / "out", kind=MERGE)
    with pytest.raises(SparsaError, match="is a sparsa merge output, not a sparsa checkpoint"):
        check_output_dir(tmp_path / "out", CHECKPOINT)


def test_check_output_dir_regular_file_refuses_even_with_force(tmp_path):
    (tmp_path / "f").write_text("mine")
    for force in (False, True):
        with pytest.raises(SparsaError, match="f: exists and is not a directory"):
            write_output(tmp_path / "f", force=force)
    assert (tmp_path / "f").read_text() == "mine"


def test_check_output_dir_symlink_refuses(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(SparsaError, match="link: is a symbolic link"):
        check_output_dir(tmp_path / "link", CHECKPOINT)


def test_output_directory_force_replaces_a_foreign_directory(tmp_path):
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "notes.txt").write_text("keep")
    write_output(tmp_path / "u", force=True)
    assert listing(tmp_path / "u") == ["a.txt", "sparsa.json"]


@pytest.mark.parametrize("make, out, message", [
    (lambda root: (root / "afile").write_text("x"), "afile/sub", "afile is not a directory"),
    (lambda root: None, "/proc/x", "cannot write in /proc"),
])
def test_check_output_unwritable_path_names_the_users_path(tmp_path, make, out, message):
    make(tmp_path)
    path = tmp_path / out
    for check in (lambda: check_output_dir(path, CHECKPOINT), lambda: check_output_file(path)):
        with pytest.raises(SparsaError, match=f"^{path}: .*{message}") as err:
            check()
        assert ".tmp-" not in str(err.value) and ".sparsa-probe" not in str(err.value)


def test_output_directory_failure_in_body_keeps_old_output_and_leaves_nothing(tmp_path):
    write_output(tmp_path / "out", {"a.txt": "old"})
    for error in (OSError(28, "No space left on device"), KeyboardInterrupt()):
        with pytest.raises((SparsaError, KeyboardInterrupt)):
            with output_directory(tmp_path / "out", CHECKPOINT) as (tmp, _):
                (tmp / "a.txt").write_text("half")
                raise error
        assert (tmp_path / "out" / "a.txt").read_text() == "old"
        assert os.listdir(tmp_path) == ["out"]


def test_output_directory_failure_leaves_no_created_parents(tmp_path):
    with pytest.raises(RuntimeError):
        with output_directory(tmp_path / "a" / "b" / "out", CHECKPOINT):
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("exchange", [True, False])
def test_swap_failure_between_steps_restores_old_output(tmp_path, monkeypatch, exchange):
    """Without RENAME_EXCHANGE the swap is two renames: a failure of the second restores the first."""
    write_output(tmp_path / "out", {"a.txt": "old"})
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    rename, calls = os.rename, []

    def failing_rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        return rename(src, dst)
    monkeypatch.setattr(os, "rename", failing_rename)
    if exchange:  # one call swaps both: nothing between the steps can fail
        write_output(tmp_path / "out", {"a.txt": "new"})
        assert (tmp_path / "out" / "a.txt").read_text() == "new" and calls == []
    else:
        with pytest.raises(SparsaError, match="out: cannot write .Input/output error"):
            write_output(tmp_path / "out", {"a.txt": "new"})
        assert (tmp_path / "out" / "a.txt").read_text() == "old"
    assert os.listdir(tmp_path) == ["out"]


def test_sigint_during_swap_is_delivered_after_it(tmp_path, monkeypatch):
    write_output(tmp_path / "out", {"a.txt": "old"})
    swap = atomic._swap_in

    def interrupted_swap(tmp, dest):
        os.kill(os.getpid(), signal.SIGINT)
        swap(tmp, dest)
    monkeypatch.setattr(atomic, "_swap_in", interrupted_swap)
    with pytest.raises(KeyboardInterrupt):
        write_output(tmp_path / "out", {"a.txt": "new"})
    assert (tmp_path / "out" / "a.txt").read_text() == "new"
    assert os.listdir(tmp_path) == ["out"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_output_directory_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with output_directory(tmp_path / "out", CHECKPOINT) as (tmp, _):
            (tmp / "secret").write_text("x")
            os.chmod(tmp / "secret", 0o600)
    finally:
        os.umask(old)
    for path in (tmp_path / "out", tmp_path / "out" / "secret", tmp_path / "out" / "sparsa.json"):
        expected = 0o755 if path.is_dir() else 0o644
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_write_file_existing_file_needs_force(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("mine")
    with pytest.raises(SparsaError, match="p.txt: exists"):
        write_file(path, b"new")
    assert path.read_text() == "mine"
    write_file(path, b"new", force=True)
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["p.txt"]
    with pytest.raises(SparsaError, match="is a directory"):
        write_file(tmp_path, b"x", force=True)


def test_replace_files_keeps_other_entries_and_modes(tmp_path):
    (tmp_path / "keep.ini").write_text("mine")
    (tmp_path / "a.bin").write_bytes(b"old")
    os.chmod(tmp_path / "a.bin", 0o640)
    replace_files(tmp_path, {"a.bin": b"new", "b.bin": b"b"})
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.bin", "keep.ini"]
    assert (tmp_path / "a.bin").read_bytes() == b"new" and (tmp_path / "keep.ini").read_text() == "mine"
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o640


def test_replace_files_failure_keeps_every_old_file(tmp_path, monkeypatch):
    (tmp_path / "a.bin").write_bytes(b"old-a")
    (tmp_path / "b.bin").write_bytes(b"old-b")
    fdopen, opened = os.fdopen, []

    def failing_fdopen(fd, mode):
        opened.append(fd)
        if len(opened) == 2:
            os.close(fd)
            raise OSError(28, "No space left on device")
        return fdopen(fd, mode)
    monkeypatch.setattr(os, "fdopen", failing_fdopen)
    with pytest.raises(SparsaError, match="cannot write .No space left"):
        replace_files(tmp_path, {"a.bin": b"new", "b.bin": b"new"})
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.bin"]
    assert (tmp_path / "a.bin").read_bytes() == b"old-a" and (tmp_path / "b.bin").read_bytes() == b"old-b"
