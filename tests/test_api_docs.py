"""The Python API (issue 22 §3, docs/api.md): the page's examples run as doctests on the toy world,
offline, in an empty folder; ``import qbench`` stays cheap; bad calls fail with one QBenchError."""
from __future__ import annotations

import doctest
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, "docs", "api.md")


@pytest.mark.slow
def test_api_page_examples_run(tmp_path, monkeypatch):
    """Every example of docs/api.md, in order, in an empty folder (failures are printed above)."""
    monkeypatch.chdir(tmp_path)
    res = doctest.testfile(PAGE, module_relative=False, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0 and res.attempted >= 20, res


def test_api_page_covers_every_function():
    import qbench

    with open(PAGE, encoding="utf-8") as f:
        text = f.read()
    for name in qbench.__all__:
        assert f"qbench.{name}(" in text.split("\n## ", 1)[1], name  # an example of each, below the table
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        assert "docs/api.md" in f.read()


def test_import_qbench_stays_cheap():
    """The API names resolve without importing torch; importing the comparison module
    (``qbench.comparison``, not named like the function) leaves the function ``qbench.compare``."""
    code = ("import sys, json, qbench\nnames = [qbench.evaluate, qbench.compare, qbench.quantize, qbench.load_pipeline, qbench.load_quantized]\n"
            "from qbench.comparison import make_row\nimport qbench.comparison\n"
            "print(json.dumps(['torch' in sys.modules, callable(qbench.compare), qbench.compare.__module__, sorted(qbench.__all__)]))")
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True, timeout=120)
    torch_loaded, is_callable, module, names = json.loads(out.stdout.strip().splitlines()[-1])
    assert not torch_loaded and is_callable and module == "qbench.pyapi"
    assert names == ["compare", "evaluate", "load_pipeline", "load_quantized", "quantize"]


def test_bad_calls_fail_with_one_line(tmp_path):
    import qbench
    from qbench.config import RunConfig
    from qbench.errors import ConfigError, QBenchError

    with pytest.raises(ConfigError, match="nosuchfield"):
        qbench.evaluate(model="toy-flux", nosuchfield=1)
    with pytest.raises(ConfigError, match="takes a RunConfig"):
        qbench.evaluate({"model": "toy-flux"})
    with pytest.raises(QBenchError, match="no results database"):
        qbench.compare("toy-flux", out_dir=str(tmp_path / "empty"))
    with pytest.raises(QBenchError, match="unknown method .nosuch."):
        qbench.evaluate(RunConfig(model="toy-flux", prompts="toy:2", out_dir=str(tmp_path)), method="nosuch")


@pytest.mark.slow
def test_quantize_refusals(tmp_path):
    import qbench
    from qbench.errors import ConfigError
    from qbench.pyapi import MODEL_ATTR

    pipe = qbench.load_pipeline("toy-flux", device="cpu")
    with pytest.raises(ConfigError, match="does not quantize"):
        qbench.quantize(pipe, "fp", out_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="is a LCMPipeline|is a StableDiffusion|but model"):
        qbench.quantize(pipe, "naive", "W8A8", model="toy-lcm", out_dir=str(tmp_path))
    delattr(pipe, MODEL_ATTR)  # a pipeline qbench did not load: the model comes from its class, or model=
    with pytest.raises(ConfigError, match="toy-flux.*say which model"):
        qbench.quantize(pipe, "naive", "W8A8", out_dir=str(tmp_path))
