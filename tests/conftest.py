"""Test set-up: offline, CPU, hermetic caches; shared tiny-model fixtures."""
from __future__ import annotations

import os

# Tests never reach the network (and open_clip would waste ~46 s in retries without these).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see qbench.cli.main

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def qbench_cache(tmp_path_factory):
    """Tiny twins and other generated artefacts go to a per-session folder."""
    path = tmp_path_factory.mktemp("qbench-cache")
    old = os.environ.get("QBENCH_CACHE")
    os.environ["QBENCH_CACHE"] = str(path)
    from qbench.cli import quiet_libraries

    quiet_libraries()
    yield path
    if old is None:
        os.environ.pop("QBENCH_CACHE", None)
    else:
        os.environ["QBENCH_CACHE"] = old


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
