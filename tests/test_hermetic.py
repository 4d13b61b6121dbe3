"""The test suite is hermetic (tests/conftest.py): every cache points into the session's sandbox,
and a write under a real cache is refused and fails the test that tried it."""
import os

import pytest

import conftest


def _inside(path, root=conftest.SANDBOX):
    path = os.path.realpath(str(path))
    return path == root or path.startswith(root + os.sep)


def test_every_cache_location_is_inside_the_sandbox():
    import datasets.config
    import huggingface_hub.constants as hfc
    import torch.hub

    from qbench.models.base import cache_root
    from qbench.zoo import common

    where = {
        "~": os.path.expanduser("~"),
        "qbench cache": cache_root(),
        "zoo work dir": common.work_root(),
        "HF home": hfc.HF_HOME,
        "HF hub cache": hfc.HF_HUB_CACHE,
        "HF assets": hfc.HF_ASSETS_CACHE,
        "HF datasets": datasets.config.HF_DATASETS_CACHE,
        "torch hub": torch.hub.get_dir(),
    }
    outside = {k: v for k, v in where.items() if not _inside(v)}
    assert not outside, outside
    assert all(not _inside(r) for r in conftest.REAL_CACHES)


def test_a_write_under_the_real_cache_is_refused_and_recorded():
    probe = os.path.join(conftest.REAL_CACHES[0], "qbench-hermetic-probe")
    n = len(conftest.VIOLATIONS)
    for attempt in (lambda: open(os.path.join(probe, "f.txt"), "w"), lambda: os.makedirs(os.path.join(probe, "sub")),
                    lambda: os.open(probe, os.O_WRONLY | os.O_CREAT), lambda: os.replace(__file__, probe)):
        with pytest.raises(PermissionError, match="must not write under the real cache"):
            attempt()
    assert not os.path.exists(probe) and os.path.exists(__file__)
    assert [v.split()[0] for v in conftest.VIOLATIONS[n:]] == ["open", "os.mkdir", "open", "os.rename"]
    del conftest.VIOLATIONS[n:]  # this test's own probes: they must not fail it


def test_zoo_work_dir_follows_the_qbench_cache(monkeypatch, tmp_path):
    from qbench.zoo import common

    monkeypatch.delenv("QBENCH_ZOO_WORK")
    monkeypatch.setenv("QBENCH_CACHE", str(tmp_path))
    assert common.work_root() == str(tmp_path / "zoo-train")
    assert common.work_dir("vae", create=False) == str(tmp_path / "zoo-train" / "vae")
    assert not (tmp_path / "zoo-train").exists()  # a reader does not create it
    monkeypatch.setenv("QBENCH_ZOO_WORK", str(tmp_path / "elsewhere"))
    assert common.work_dir("vae") == str(tmp_path / "elsewhere" / "vae") and (tmp_path / "elsewhere" / "vae").is_dir()
