"""sparsa sets libgomp's spin count before an OpenMP runtime loads, unless the user chose one."""

import os
import subprocess
import sys

import pytest

from sparsa.openmp import SPIN_COUNT


@pytest.mark.parametrize("user, expected", [({}, SPIN_COUNT), ({"GOMP_SPINCOUNT": "7"}, "7"),
                                            ({"OMP_WAIT_POLICY": "PASSIVE"}, None)])
def test_import_sets_the_spin_count_unless_the_user_did(user, expected):
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")} | user
    code = "import os, sparsa; print(os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(expected)
