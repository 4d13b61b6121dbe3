"""OpenMP's wait policy is fixed when torch loads libgomp: ``import qbench`` first asks for the
passive wait (the active one made an API user's latency 170x slower on a shared machine), and what
torch really got is recorded and noted."""
from __future__ import annotations

import os
import subprocess
import sys

CODE = "{first}\nfrom qbench.measure import omp_wait_policy, provenance\nprint(omp_wait_policy(), provenance('cpu')['omp_wait_policy'])"


def _run(first: str, **env: str) -> str:
    e = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    e.update(env)
    return subprocess.run([sys.executable, "-c", CODE.format(first=first)], env=e, capture_output=True, text=True, check=True).stdout.strip()


def test_qbench_first_gets_the_passive_wait():
    assert _run("import qbench, torch") == "PASSIVE PASSIVE"


def test_torch_first_is_recorded_as_active_and_the_users_choice_is_kept():
    assert _run("import torch, qbench") == "unset (active wait) unset (active wait)"
    assert _run("import torch, qbench", OMP_WAIT_POLICY="active") == "ACTIVE ACTIVE"


def test_a_cpu_run_under_the_active_wait_says_so():
    code = ("import torch, qbench\nfrom qbench.harness import _notes\nfrom qbench.models.loader import load_model\n"
            "m = load_model('toy-flux', device='cpu')\nprint([n for n in _notes(m) if 'OMP_WAIT_POLICY' in n])")
    e = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, check=True).stdout
    assert "import qbench before torch" in out
