"""Bad input through the command line, the way a new user makes it.

Every case must end with exactly one ``sparsa: error:`` line naming what is wrong, a non-zero exit,
no traceback, every file that existed before untouched (by hash), and nothing new left behind.
"""

import hashlib
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from safetensors.torch import save_file

from conftest import run_cli

SYNTHETIC = "synthetic:cameras=5,points=50,seed=1"


def snapshot(root) -> dict[str, str]:
    """Relative path -> sha256 of every file (``dir`` for directories) under ``root``."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = "dir"
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def refused(capsys, root, *argv, naming=()) -> str:
    """Run the CLI and check the contract; return the error line."""
    before = snapshot(root)
    code, _, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code not in (0, None) and len(lines) == 1 and lines[0].startswith("sparsa: error: "), err
    assert "Traceback" not in err
    for text in naming:
        assert str(text) in lines[0], lines[0]
    assert snapshot(root) == before
    return lines[0]


def user_dir(root, manifest: str = "sparsa.json"):
    """A directory of the user's: notes.txt and a stray manifest-named file."""
    d = root / "u"
    d.mkdir()
    (d / "notes.txt").write_text("keep\n")
    (d / manifest).write_text("{}")
    return d


def merge_config(root) -> str:
    """A T-Switch merge of two tiny fine-tunes of a tiny base, as YAML."""
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(8, 8, generator=g)}
    paths = []
    for name, state in (("base", base), ("a", {"w": base["w"] + 0.1}), ("b", {"w": base["w"] - 0.1})):
        paths.append(root / f"{name}.safetensors")
        save_file(state, str(paths[-1]))
    config = root / "merge.yaml"
    config.write_text(yaml.safe_dump({"merge_method": "tswitch", "base_model": str(paths[0]),
                                      "models": [{"model": str(p)} for p in paths[1:]]}))
    return str(config)


# -- 1. outputs: never replace what sparsa did not write -----------------------------------------
@pytest.mark.parametrize("manifest", ["sparsa.json", "sparsa-colmap.json"])
@pytest.mark.parametrize("command", [
    ["compress", "smollm2-135m", "--method", "rtn"],
    ["ba", SYNTHETIC],
    ["sfm", SYNTHETIC],
    ["merge", None],
])
def test_output_user_directory_refused(capsys, tmp_path, command, manifest):
    u = user_dir(tmp_path, manifest)
    argv = [merge_config(tmp_path) if a is None else a for a in command]
    line = refused(capsys, tmp_path, *argv, "-o", str(u), "--quiet", naming=[u, "notes.txt"])
    assert "--force" in line
    assert (u / "notes.txt").read_text() == "keep\n"


@pytest.mark.parametrize("command", [["ba", SYNTHETIC], ["sfm", SYNTHETIC]])
def test_output_photos_directory_refused(capsys, tmp_path, command):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "IMG_0001.jpg").write_bytes(b"\xff\xd8jpeg")
    refused(capsys, tmp_path, *command, "-o", str(photos), naming=[photos, "IMG_0001.jpg"])


def test_output_ba_existing_file_refused(capsys, tmp_path):
    (tmp_path / "result").write_text("mine")
    refused(capsys, tmp_path, "ba", SYNTHETIC, "-o", str(tmp_path / "result"),
            naming=[tmp_path / "result", "not a directory"])
    (tmp_path / "problem.txt").write_text("mine")
    refused(capsys, tmp_path, "ba", SYNTHETIC, "-o", str(tmp_path / "problem.txt"),
            naming=[tmp_path / "problem.txt", "exists"])


def test_output_earlier_output_with_user_notes_refused(capsys, tmp_path):
    out = tmp_path / "model"
    assert run_cli(capsys, "ba", SYNTHETIC, "-o", str(out), "--json")[0] == 0
    (out / "notes.txt").write_text("my results")
    refused(capsys, tmp_path, "ba", SYNTHETIC, "-o", str(out), naming=[out, "notes.txt"])
    (out / "notes.txt").unlink()
    assert run_cli(capsys, "ba", SYNTHETIC, "-o", str(out), "--json")[0] == 0  # an earlier output: replaced


def test_output_other_kind_refused(capsys, tmp_path):
    out = tmp_path / "merged"
    assert run_cli(capsys, "merge", merge_config(tmp_path), "-o", str(out), "--quiet")[0] == 0
    refused(capsys, tmp_path, "compress", "smollm2-135m", "--method", "rtn", "-o", str(out),
            naming=[out, "is a sparsa merge output, not a sparsa checkpoint"])


@pytest.mark.parametrize("command", [["compress", "smollm2-135m", "--method", "rtn"], ["ba", SYNTHETIC]])
@pytest.mark.parametrize("target", ["afile/sub", "/proc/x"])
def test_output_unwritable_path_named_as_given(capsys, tmp_path, command, target):
    (tmp_path / "afile").write_text("mine")
    out = target if target.startswith("/") else str(tmp_path / target)
    line = refused(capsys, tmp_path, *command, "-o", out, naming=[out])
    assert ".tmp-" not in line and ".sparsa-probe" not in line


def test_output_force_replaces_a_user_directory(capsys, tmp_path):
    u = user_dir(tmp_path)
    code, _, err = run_cli(capsys, "ba", SYNTHETIC, "-o", str(u), "--force", "--json")
    assert code == 0, err
    assert sorted(os.listdir(u)) == ["cameras.bin", "images.bin", "points3D.bin", "sparsa-colmap.json"]


def test_output_ctrl_c_mid_write_exits_130_and_keeps_the_old_output(tmp_path):
    """SIGINT arrives while the model files are being written: exit 130, one line, old output whole."""
    out = tmp_path / "model"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from sparsa.cli import main
        write_bytes = Path.write_bytes
        def interrupted(self, data):
            if self.name.startswith("images"):
                os.kill(os.getpid(), signal.SIGINT)
            return write_bytes(self, data)
        if sys.argv[1] == "interrupt":
            Path.write_bytes = interrupted
        sys.exit(main(["ba", "{SYNTHETIC}", "-o", "{out}", "--quiet", "--text"]))
    """)
    first = subprocess.run([sys.executable, "-c", script, "plain"], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    before = snapshot(tmp_path)
    run = subprocess.run([sys.executable, "-c", script, "interrupt"], capture_output=True, text=True)
    assert run.returncode == 130 and run.stderr.strip() == "sparsa: error: interrupted", run.stderr
    assert snapshot(tmp_path) == before


def test_output_in_place_refinement_keeps_colmap_files(capsys, tmp_path):
    """``ba sparse/0 -o sparse/0`` rewrites the model files and keeps COLMAP's others."""
    model = tmp_path / "sparse" / "0"
    assert run_cli(capsys, "ba", SYNTHETIC, "--max-iters", "0", "-o", str(model), "--quiet")[0] == 0
    (model / "sparsa-colmap.json").unlink()  # as if COLMAP wrote it
    extra = {"rigs.bin": b"\0" * 8, "project.ini": b"[General]\n"}
    for name, data in extra.items():
        (model / name).write_bytes(data)
    before = (model / "images.bin").read_bytes()
    code, _, err = run_cli(capsys, "ba", str(model), "-o", str(model), "--json")
    assert code == 0, err
    assert sorted(os.listdir(model)) == ["cameras.bin", "images.bin", "points3D.bin", "project.ini", "rigs.bin"]
    assert all((model / n).read_bytes() == d for n, d in extra.items())
    assert (model / "images.bin").read_bytes() != before
