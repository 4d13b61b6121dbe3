"""CI: the wheel works outside the repo (issue 22 §2). Run with the development environment's
Python (``.ci/run``: ``.venv/bin/python tools/wheel_check.py``); exits non-zero on any failure.

1. builds the wheel from a copy of the checkout's files (tracked and untracked-not-ignored: what a
   clean clone holds, no stale ``build/``), ``pip wheel --no-deps --no-build-isolation``;
2. checks it holds the shipped data under qbench's namespace (``qbench/data/datasets/coco``,
   ``qbench/data/sweeps``, ``qbench/data/baselines``), ``qbench/py.typed`` and the zoo weights,
   and no top-level package but ``qbench``;
3. makes a fresh venv outside the repo, inside an unrelated git repository (so a qbench that
   asked git about the folder it is installed in would record that repository's commit), and
   installs the wheel there with ``--no-deps --no-index``; the dependencies are reused from this
   environment through a ``.pth`` line naming its ``site-packages`` (a plain path line: that
   folder's own ``.pth`` files, the editable install's finder among them, are not run, so only the
   wheel's ``qbench`` is importable);
4. from another folder, offline, with HOME an empty folder and no cache variables, runs
   ``qbench run --model toy-flux --prompts toy:4`` and ``--model tiny-sdxl-turbo --prompts
   coco2017:2`` (``--full``: also ``qbench sweep toy --dry-run``) and ``qbench.compare()``, and
   checks that the shipped data loads from the wheel and each stored result: made by the
   wheel's qbench, provenance with no git commit and the wheel as ``direct_url``; nothing written
   into HOME but ``~/.cache/qbench`` (the tiny twins' random weights, made once per machine).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: files the wheel must hold (paths inside it)
MUST_HOLD = ("qbench/py.typed", "qbench/data/datasets/coco/captions_val2017.jsonl", "qbench/data/datasets/coco/MS-COCO_val2014_30k_captions.csv",
             "qbench/data/sweeps/toy.yaml", "qbench/data/sweeps/paper.yaml", "qbench/data/baselines/toy.json",
             "qbench/data/baselines/qsched/toy-flux_W4A8.json", "qbench/data/baselines/mixdq/toy-flux_W4A8.yaml",
             "qbench/methods/__init__.py", "qbench/zoo/weights/toy-flux/model_index.json")
RUNS = (("toy-flux", "toy:4"), ("tiny-sdxl-turbo", "coco2017:2"))
CACHE_VARS = ("XDG_CACHE_HOME", "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "TORCH_HOME", "QBENCH_CACHE", "QBENCH_ZOO_WORK", "QBENCH_DATA",
              "PYTHONPATH", "VIRTUAL_ENV")


class Failed(Exception):
    pass


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, check=False, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise Failed(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def build(tmp: str) -> str:
    """The wheel built from a copy of the checkout's files; its path."""
    src = os.path.join(tmp, "src")
    files = sh(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"]).stdout.split("\0")
    for rel in filter(None, files):
        if os.path.isfile(os.path.join(ROOT, rel)):  # (a tracked file deleted in the work tree is not copied)
            os.makedirs(os.path.dirname(os.path.join(src, rel)) or src, exist_ok=True)
            shutil.copy2(os.path.join(ROOT, rel), os.path.join(src, rel))
    dist = os.path.join(tmp, "dist")
    sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", dist, src])
    (whl,) = [os.path.join(dist, f) for f in os.listdir(dist) if f.endswith(".whl")]
    return whl


def check_contents(whl: str) -> None:
    names = set(zipfile.ZipFile(whl).namelist())
    missing = [m for m in MUST_HOLD if m not in names]
    if missing:
        raise Failed(f"the wheel lacks {', '.join(missing)}")
    tops = {n.split("/", 1)[0] for n in names if "/" in n and ".dist-info/" not in n}
    if tops != {"qbench"}:
        raise Failed(f"the wheel installs top-level folders besides qbench: {sorted(tops - {'qbench'})}")


def make_venv(tmp: str, whl: str) -> tuple[str, str]:
    """(venv folder, its site-packages): a fresh venv inside an unrelated git repository, the wheel
    installed, this environment's site-packages reached through a .pth line."""
    project = os.path.join(tmp, "unrelated-project")
    os.makedirs(project)
    git = ["git", "-C", project, "-c", "user.name=ci", "-c", "user.email=ci@example.invalid"]
    sh(git[:3] + ["init", "-q"])
    with open(os.path.join(project, "README"), "w") as f:
        f.write("a project that is not qbench\n")
    sh(git + ["add", "README"])
    sh(git + ["commit", "-q", "-m", "unrelated"])
    venv = os.path.join(project, ".venv")
    sh([sys.executable, "-m", "venv", "--without-pip", venv])
    py = os.path.join(venv, "bin", "python")
    sh([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index", whl])
    site = sh([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    with open(os.path.join(site, "_qbench_ci_dependencies.pth"), "w") as f:
        f.write("".join(p + "\n" for p in ours))
    return venv, site


def check_runs(tmp: str, venv: str, site: str, whl: str, full: bool = False) -> list[str]:
    work, home = os.path.join(tmp, "unrelated-project", "elsewhere"), os.path.join(tmp, "home")
    os.makedirs(work)
    os.makedirs(home)
    env = {k: v for k, v in os.environ.items() if k not in CACHE_VARS}
    env.update(HOME=home, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE",
               PATH=os.path.join(venv, "bin") + os.pathsep + env.get("PATH", ""))
    py, qbench = os.path.join(venv, "bin", "python"), os.path.join(venv, "bin", "qbench")
    probe = ("import json, qbench, qbench.methods, qbench.regress as r, qbench.prompts as p, qbench.sweep as s; "
             "print(json.dumps([qbench.__file__, qbench.methods.__file__, r.BASELINE, p.data_dir(), s.resolve_sweep('toy'), "
             "s.resolve_sweep('paper')]))")
    where = json.loads(sh([py, "-c", probe], cwd=work, env=env).stdout)
    outside = [w for w in where if not w.startswith(site + os.sep)]
    if outside:
        raise Failed(f"not the wheel's files: {outside}")
    sweep = sh([qbench, "sweep", "toy", "--dry-run", "--out-dir", "sweep"], cwd=work, env=env).stdout if full else ""
    lines = [f"wheel-check: the wheel's code, methods, baselines, COCO captions and sweeps (toy, paper) load from {site}"
             + (f"; qbench sweep toy --dry-run: {len(sweep.splitlines())} lines" if full else "")]
    for model, prompts in RUNS:
        t = time.perf_counter()
        res = json.loads(sh([qbench, "run", "--model", model, "--prompts", prompts, "--json", "--no-progress", "--out-dir", "out"], cwd=work, env=env).stdout)
        qb = res["provenance"]["qbench"]
        if res["provenance"].get("git") is not None or qb.get("git") is not None:
            raise Failed(f"{model}: the run records a git commit ({res['provenance'].get('git')}, {qb.get('git')}): not a checkout of qbench")
        if not str((qb.get("direct_url") or {}).get("url", "")).endswith(os.path.basename(whl)):
            raise Failed(f"{model}: provenance.qbench has no direct_url naming the wheel: {qb}")
        if res["n_images"] != int(prompts.split(":")[1]):
            raise Failed(f"{model}: {res['n_images']} images for {prompts}")
        scores = ", ".join(f"{k} {v['value']:.4g}" for k, v in res["metrics"].items() if isinstance(v.get("value"), (int, float)))
        lines.append(f"wheel-check: qbench run --model {model} --prompts {prompts}: {res['n_images']} images, {scores} ({time.perf_counter() - t:.0f} s)")
    t = time.perf_counter()
    api = ("import json, qbench; df = qbench.compare(out_dir='out'); "
           "print(json.dumps(sorted(df['model'].unique().tolist())))")
    models = json.loads(sh([py, "-c", api], cwd=work, env=env).stdout.strip().splitlines()[-1])
    if models != sorted(m for m, _ in RUNS):
        raise Failed(f"qbench.compare(out_dir='out') gave the models {models}")
    lines.append(f"wheel-check: qbench.compare(out_dir='out') (the Python API): a DataFrame of {', '.join(models)} ({time.perf_counter() - t:.0f} s)")
    left = sorted(os.path.relpath(os.path.join(d, n), home) for d, dirs, files in os.walk(home) for n in dirs + files)
    stray = [p for p in left if not (p == ".cache" or p == os.path.join(".cache", "qbench") or p.startswith(os.path.join(".cache", "qbench", "")))]
    if stray:  # ~/.cache/qbench: the tiny twins' random weights, made once per machine (README)
        raise Failed(f"the runs wrote into HOME outside ~/.cache/qbench: {stray[:10]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (printed)")
    ap.add_argument("--full", action="store_true", help="also `qbench sweep toy --dry-run` (about a minute more)")
    a = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="qbench-wheel-")
    t0 = time.perf_counter()
    try:
        whl = build(tmp)
        check_contents(whl)
        print(f"wheel-check: built {os.path.basename(whl)} ({os.path.getsize(whl) / 1e6:.1f} MB), holds the shipped data ({time.perf_counter() - t0:.0f} s)", flush=True)
        venv, site = make_venv(tmp, whl)
        for line in check_runs(tmp, venv, site, whl, full=a.full):
            print(line, flush=True)
    except Failed as e:
        print(f"wheel-check: FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        if a.keep:
            print(f"wheel-check: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"wheel-check: passed in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
