"""Shipped data and provenance (issue 22 §2): ``datasets/``, ``sweeps/`` and ``reports/baselines/``
are found through :func:`qbench.resources.data_path` (a wheel's ``qbench/data/...`` first, else the
checkout's folders); pyproject.toml ships every such file; git provenance only for a checkout of
qbench itself. The built wheel itself is checked end to end by ``tools/wheel_check.py`` (CI)."""
from __future__ import annotations

import fnmatch
import os
import subprocess

import pytest

from qbench import measure, resources
from qbench.errors import ConfigError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_checkout_finds_its_own_folders():
    assert resources.checkout_root() == ROOT
    assert resources.data_path("datasets", "coco", "captions_val2017.jsonl") == os.path.join(ROOT, "datasets", "coco", "captions_val2017.jsonl")
    assert resources.data_path("baselines") == os.path.join(ROOT, "reports", "baselines")
    from qbench import regress
    from qbench.prompts import coco2017

    assert os.path.isfile(regress.BASELINE) and len(coco2017()) == 5000
    assert all(os.path.isfile(c["options"][k]) for c in regress.cells() for k in ("qsched_ckpt", "allocation") if k in c["options"])
    with pytest.raises(KeyError):
        resources.data_path("nosuch")


def test_installed_package_data_comes_first(tmp_path, monkeypatch):
    """An installed qbench (importlib.resources.files('qbench') holds data/) reads its own copy,
    never a checkout's; without one and outside a checkout the path names the package's."""
    pkg = tmp_path / "qbench"
    (pkg / "data" / "sweeps").mkdir(parents=True)
    (pkg / "data" / "sweeps" / "toy.yaml").write_text("name: shipped\n")
    monkeypatch.setattr(resources.resources, "files", lambda name: pkg)
    assert resources.data_path("sweeps", "toy.yaml") == str(pkg / "data" / "sweeps" / "toy.yaml")
    assert resources.data_path("sweeps") == str(pkg / "data" / "sweeps")
    from qbench.sweep import resolve_sweep

    assert resolve_sweep("toy") == str(pkg / "data" / "sweeps" / "toy.yaml")
    monkeypatch.setattr(resources, "checkout_root", lambda: None)
    assert resources.data_path("datasets", "coco", "x.csv") == str(pkg / "data" / "datasets" / "coco" / "x.csv")


def test_shipped_sweep_by_name():
    from qbench.sweep import load_sweep, resolve_sweep

    assert resolve_sweep("toy") == os.path.join(ROOT, "sweeps", "toy.yaml")
    assert load_sweep("toy").name == "toy"
    for missing in ("nosuch", "sweeps/missing.yaml"):
        with pytest.raises(ConfigError, match=missing):
            load_sweep(missing)


def test_pyproject_ships_every_data_file():
    """Each tracked file of the mapped data folders matches a package-data glob (setuptools globs:
    ``*`` within one folder), so a file added there is never silently left out of the wheel."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        conf = tomllib.load(f)["tool"]["setuptools"]
    dirs, globs = conf["package-dir"], conf["package-data"]
    assert "qbench/py.typed" in subprocess.run(["git", "-C", ROOT, "ls-files", "qbench/py.typed"], check=True, capture_output=True, text=True).stdout
    for pkg in ("qbench.data.datasets", "qbench.data.sweeps", "qbench.data.baselines"):
        assert pkg in conf["packages"]
        folder = dirs[pkg]
        tracked = subprocess.run(["git", "-C", ROOT, "ls-files", folder], capture_output=True, text=True, check=True).stdout.split()
        assert tracked, folder
        for path in tracked:
            rel = os.path.relpath(path, folder)
            assert any(fnmatch.fnmatch(rel, g) and rel.count("/") == g.count("/") for g in globs[pkg]), f"{path} is not shipped"


def _git(*args, cwd):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args], cwd=cwd, check=True, capture_output=True)


def test_git_provenance_only_for_qbench_itself(tmp_path, monkeypatch):
    """A qbench whose folder sits inside another repository (a wheel in a project's venv) records no
    commit, but its version and the installer's direct_url.json; a checkout records its commit."""
    assert measure.git_hash() is not None  # this checkout
    other = tmp_path / "project"
    (other / "venv" / "site-packages").mkdir(parents=True)
    _git("init", "-q", cwd=other)
    (other / "README").write_text("x\n")
    _git("add", "README", cwd=other)
    _git("commit", "-q", "-m", "x", cwd=other)
    monkeypatch.setattr(resources, "checkout_root", lambda: None)  # an installed qbench
    assert measure.git_hash() is None
    v = measure.qbench_version()
    assert v["git"] is None and v["version"] and "url" in v["direct_url"]  # this venv's editable install: PEP 610
    monkeypatch.setattr(resources, "checkout_root", lambda: str(other / "venv" / "site-packages"))  # not a repository's root
    assert measure.git_hash() is None
