"""The same command with the same seed writes the same bytes: a tiny model compressed with SpQR
(calibration, the Hessian solve, outliers) once in this process and once in another (its own
hash seed and fresh library state) gives identical files."""

import subprocess
import sys

from sparsa.cli import main


def argv(model_dir, out) -> list[str]:
    return ["compress", str(model_dir), "-o", str(out), "--method", "spqr", "--bits", "3", "--nsamples", "4",
            "--seqlen", "16", "--seed", "3", "--quiet"]


def test_compress_in_two_processes_writes_identical_files(hf_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(argv(hf_dir, a)) == 0
    done = subprocess.run([sys.executable, "-m", "sparsa", *argv(hf_dir, b)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and "sparsa.json" in names
    assert any(name.endswith(".safetensors") for name in names)
    differ = [name for name in names if (a / name).read_bytes() != (b / name).read_bytes()]
    assert not differ, f"files that differ between two identical runs: {differ}"
