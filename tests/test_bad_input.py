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


# -- 2. bad values and files: one line naming them -----------------------------------------------
@pytest.fixture
def world(tmp_path, tiny_llama, tiny_tokenizer):
    """Inputs a case may need: a tiny checkpoint, a Hugging Face dir, a text file, a merge setup."""
    from conftest import word_text
    from sparsa.compress import RTNConfig, compress_
    from sparsa.nn.checkpoint import save_checkpoint

    tiny_llama.save_pretrained(tmp_path / "hf")
    tiny_tokenizer.save_pretrained(tmp_path / "hf")
    compress_(tiny_llama, RTNConfig(bits=4, group_size=32), progress=False)
    save_checkpoint(tiny_llama, tiny_tokenizer, tmp_path / "ck", method={})
    (tmp_path / "words.txt").write_text(word_text(300))
    merge_config(tmp_path)
    return tmp_path


def edit_json(path, **changes):
    import json

    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def edit_shard(ck, edit):
    from safetensors.torch import load_file

    shard = next(ck.glob("model-*.safetensors"))
    tensors = load_file(str(shard))
    edit(tensors)
    save_file(tensors, str(shard), metadata={"format": "pt"})


def edit_yaml(root, **changes):
    path = root / "merge.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **changes}))


def nan_norm(t):
    t["model.norm.weight"][0] = float("nan")


def truncate(ck):
    shard = next(ck.glob("model-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-100])


def huge_header(ck):
    shard = next(ck.glob("model-*.safetensors"))
    shard.write_bytes((2**40).to_bytes(8, "little") + shard.read_bytes()[8:])


def wrong_dtype(t):
    t["model.layers.0.mlp.up_proj.codes"] = t["model.layers.0.mlp.up_proj.codes"].float()


EVAL = ["eval", "{ck}", "--text-file", "{words}", "--seqlen", "32", "--quiet"]
CASES = {  # id: (what to break, argv, texts the error line must hold)
    "nan-dense-tensor": (lambda w: edit_shard(w / "ck", nan_norm), EVAL, ["model.norm.weight", "NaN/inf"]),
    "wrong-task": (lambda w: edit_json(w / "ck" / "sparsa.json", task="encoder"), EVAL, ["sparsa.json", "'encoder'"]),
    "config-sizes": (lambda w: edit_json(w / "ck" / "config.json", num_attention_heads=7), EVAL,
                     ["config.json", "attention heads (7)"]),
    "truncated-shard": (lambda w: truncate(w / "ck"), EVAL, ["safetensors"]),
    "huge-header": (lambda w: huge_header(w / "ck"), EVAL, ["corrupt safetensors header"]),
    "wrong-dtype": (lambda w: edit_shard(w / "ck", wrong_dtype), EVAL, ["up_proj"]),
    "corrupt-manifest": (lambda w: (w / "ck" / "sparsa.json").write_text("{oops"), EVAL, ["sparsa.json"]),
    "ppl-empty": (None, ["eval", "{hf}", "--ppl", ""], ["--ppl"]),
    "ppl-trailing-comma": (None, ["eval", "{hf}", "--ppl", "wiki,"], ["--ppl", "empty corpus name"]),
    "device-tpu": (None, ["eval", "{hf}", "--device", "tpu"], ["--device", "tpu"]),
    "device-foo": (None, ["ba", SYNTHETIC, "--device", "foo"], ["--device", "foo"]),
    "threads": (None, ["ba", SYNTHETIC, "--threads", "-2"], ["--threads", "-2"]),
    "recover-lr": (None, ["compress", "{hf}", "-o", "{root}/out", "--method", "magnitude", "--recover",
                          "--recover-lr", "nan"], ["--recover-lr", "nan"]),
    "gp-max-iters": (None, ["sfm", SYNTHETIC, "--gp-max-iters", "-5"], ["--gp-max-iters"]),
    "empty-prompt": (None, ["generate", "{hf}", "--prompt", ""], ["--prompt"]),
    "prompt-past-context": (None, ["generate", "{hf}", "--prompt", "w1 w2", "--max-new-tokens", "300"],
                            ["context of 256 tokens"]),
    "huge-scene-cameras": (None, ["ba", "synthetic:cameras=100000000,points=50,seed=1"], ["memory"]),
    "huge-scene-points": (None, ["ba", "synthetic:cameras=5,points=1e10,seed=1"], ["memory"]),
    "duplicate-spec-key": (None, ["ba", "synthetic:cameras=5,cameras=6,points=50,seed=1"], ["cameras", "twice"]),
    "one-camera-bal": (lambda w: (w / "one.txt").write_text("1 2 2\n0 0 1.0 2.0\n0 1 3.0 4.0\n"
                                                             + "0.0\n" * 6 + "500.0\n0.0\n0.0\n" + "1.0\n" * 6),
                       ["ba", "{root}/one.txt"], ["no point is seen by two"]),
    "bal-bad-count": (lambda w: (w / "bad.txt").write_text("2 2 x\n"), ["ba", "{root}/bad.txt"], ["bad.txt"]),
    "colmap-missing-file": (lambda w: (w / "sparse").mkdir() or (w / "sparse" / "cameras.bin").write_bytes(b""),
                            ["ba", "{root}/sparse"], ["not a COLMAP model"]),
    "merge-nan-lam": (lambda w: edit_yaml(w, merge_method="task_arithmetic", parameters={"lam": float("nan")}),
                      ["merge", "{root}/merge.yaml", "-o", "{root}/merged"], ["lam=nan"]),
    "merge-drop-ratio-lots": (lambda w: edit_yaml(w, parameters={"drop_ratio": "lots"}),
                              ["merge", "{root}/merge.yaml", "-o", "{root}/merged"], ["drop_ratio", "'lots'"]),
    "merge-yaml-typo": (lambda w: edit_yaml(w, merge_methd="ties"), ["merge", "{root}/merge.yaml", "-o", "{root}/m"],
                        ["merge_methd"]),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_line_naming_it(capsys, world, case):
    breaks, argv, naming = CASES[case]
    if breaks is not None:
        breaks(world)
    paths = {"ck": world / "ck", "hf": world / "hf", "words": world / "words.txt", "root": world}
    refused(capsys, world, *[a.format(**paths) for a in argv], naming=naming)


def test_bad_input_written_files_have_the_usual_permissions(capsys, world):
    old = os.umask(0o022)
    try:
        assert run_cli(capsys, "merge", str(world / "merge.yaml"), "-o", str(world / "bank"), "--quiet")[0] == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (world / "bank").iterdir()}
    assert modes == {"switch.safetensors": 0o644, "merge.json": 0o644}
    assert {p.stat().st_mode & 0o777 for p in (world / "ck").iterdir()} == {0o644}
