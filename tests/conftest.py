"""Test set-up: offline, CPU, hermetic caches; shared tiny-model fixtures.

Hermetic: before anything imports huggingface_hub, diffusers, datasets, open_clip or torch (which
read their cache locations once, at import), every cache, the qbench cache, the zoo's work dir
and HOME itself point into one per-session temporary folder (removed at the end), so no test
can depend on files an earlier run left in ``~/.cache``. A guard (an audit hook, :func:`_guard`)
refuses any write under the real caches and fails the test that tried it, even if the code under
test caught the error. ``.ci/run`` also runs the suite with an empty HOME.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

# Tests never reach the network (and open_clip would waste ~46 s in retries without these).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see qbench.cli.main

CACHE_VARS = ("XDG_CACHE_HOME", "QBENCH_CACHE", "QBENCH_ZOO_WORK", "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "TORCH_HOME")
# the real caches: ~/.cache and wherever the caller's environment pointed the caches (both spellings
# of each: as given and with symlinks resolved)
_real = [os.path.join(os.path.expanduser("~"), ".cache")] + [os.path.expanduser(os.environ[v]) for v in CACHE_VARS if os.environ.get(v)]
REAL_CACHES = sorted({f(p) for p in _real for f in (os.path.abspath, os.path.realpath)})
SANDBOX = os.path.realpath(tempfile.mkdtemp(prefix="qbench-tests-"))
_home = os.path.join(SANDBOX, "home")
_cache = os.path.join(_home, ".cache")
HERMETIC_ENV = {
    "HOME": _home,
    "XDG_CACHE_HOME": _cache,
    "QBENCH_CACHE": os.path.join(_cache, "qbench"),
    "QBENCH_ZOO_WORK": os.path.join(_cache, "qbench", "zoo-train"),
    "HF_HOME": os.path.join(_cache, "huggingface"),
    "HF_HUB_CACHE": os.path.join(_cache, "huggingface", "hub"),
    "HF_DATASETS_CACHE": os.path.join(_cache, "huggingface", "datasets"),
    "TORCH_HOME": os.path.join(_cache, "torch"),
    "MPLCONFIGDIR": os.path.join(_home, ".config", "matplotlib"),
}
_ALREADY = [m for m in ("huggingface_hub", "diffusers", "transformers", "datasets", "open_clip", "torch") if m in sys.modules]
assert not _ALREADY, f"{_ALREADY} imported before tests/conftest.py set the cache variables (a pytest plugin?)"
os.makedirs(_cache)
os.environ.update(HERMETIC_ENV)

import pytest  # noqa: E402

# -- the guard ---------------------------------------------------------------------------------------
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {"os.mkdir": (0,), "os.remove": (0,), "os.rmdir": (0,), "shutil.rmtree": (0,), "os.truncate": (0,),
                "os.chmod": (0,), "os.rename": (0, 1), "os.link": (1,), "os.symlink": (1,), "sqlite3.connect": (0,)}
VIOLATIONS: list[str] = []  # "<event> <path>" of every write refused, in order


def _under_real_cache(path) -> str | None:
    try:
        p = os.path.abspath(os.fsdecode(os.fspath(path)))
    except TypeError:  # a file descriptor
        return None
    if p == SANDBOX or p.startswith(SANDBOX + os.sep):
        return None
    return next((r for r in REAL_CACHES if p == r or p.startswith(r + os.sep)), None)


def _guard(event: str, args: tuple) -> None:
    """Audit hook (PEP 578): refuse file-system writes under the real caches (open for writing,
    mkdir, rename, remove, ...) with an error, and record them for the per-test check."""
    if event == "open":
        path, mode, flags = args
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
        paths = (path,) if writes else ()
    elif event in _PATH_EVENTS:
        paths = tuple(args[i] for i in _PATH_EVENTS[event])
    else:
        return
    for path in paths:
        root = _under_real_cache(path)
        if root is not None:
            VIOLATIONS.append(f"{event} {path}")
            raise PermissionError(f"tests must not write under the real cache {root}: {event} {path}")


sys.addaudithook(_guard)


@pytest.fixture(autouse=True)
def _no_real_cache_writes():
    """Fail the test that tried to write under a real cache (even if the code caught the error)."""
    n = len(VIOLATIONS)
    yield
    if len(VIOLATIONS) > n:
        new = VIOLATIONS[n:]
        del VIOLATIONS[n:]
        pytest.fail("wrote under the real cache: " + "; ".join(new), pytrace=False)


def pytest_sessionfinish(session):
    if VIOLATIONS:  # outside any test (collection, imports): fail the run
        sys.stderr.write("\nwrote under the real cache outside tests: " + "; ".join(VIOLATIONS) + "\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config):
    shutil.rmtree(SANDBOX, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def qbench_cache():
    """The per-session qbench cache (tiny twins and other generated artefacts)."""
    from qbench.cli import quiet_libraries

    quiet_libraries()
    return HERMETIC_ENV["QBENCH_CACHE"]


@pytest.fixture
def empty_hf_cache(monkeypatch, tmp_path):
    """An empty HF hub cache for this test, also set where huggingface_hub keeps it (its
    constants are read once, at import, so the environment variable alone comes too late)."""
    import huggingface_hub.constants as hfc

    path = str(tmp_path / "hf-hub")
    os.makedirs(path)
    monkeypatch.setenv("HF_HUB_CACHE", path)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", path)
    return path


_MODELS: dict = {}


@pytest.fixture(scope="session")
def tiny_model():
    """``tiny_model("tiny-lcm")`` -> a LoadedModel, loaded once per session (do not mutate it:
    tests that quantize or wrap a model should call ``load_model`` themselves)."""
    from qbench.models.loader import load_model

    def get(name: str):
        if name not in _MODELS:
            _MODELS[name] = load_model(name, device="cpu")
        return _MODELS[name]

    return get


@pytest.fixture
def make_cfg(tmp_path):
    """RunConfig with an isolated out_dir, few prompts, no latency repeats to speak of."""
    from qbench.config import RunConfig

    def make(**kw):
        base = dict(model="tiny-lcm", prompts="coco2017:2", batch_size=2, out_dir=str(tmp_path / "reports"), latency_warmup=0, latency_repeats=1, metrics=[])
        base.update(kw)
        return RunConfig(**base)

    return make


TINY_MODELS = ["tiny-lcm", "tiny-pcm", "tiny-sdxl-turbo", "tiny-flux"]
