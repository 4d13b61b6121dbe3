"""``qbench.harness.run(cfg, pipe=...)`` (issue 15 §4): a pipeline the user brings is scored as
method ``external``; its image cache is keyed by the pipeline's content, so another pipeline (or
this one changed) never gets its images; it pairs with the model's fp run."""
from __future__ import annotations

import numpy as np
import pytest

from qbench.config import RunConfig
from qbench.errors import ConfigError, QBenchError


def _naive(bits: str, mode: str = "simulate"):
    from qbench.catalog import METHODS
    from qbench.models.loader import load_model

    m = load_model("toy-flux", device="cpu")
    method = METHODS.get("naive")(RunConfig(model="toy-flux", method="naive", bits=bits, mode=mode))
    method.convert(m)
    return m


def _images(res):
    import os

    from PIL import Image

    files = sorted(f for f in os.listdir(res.images_dir) if f.endswith(".png"))
    return [np.asarray(Image.open(os.path.join(res.images_dir, f))) for f in files]


def test_brought_pipelines_are_scored_and_never_share_images(make_cfg):
    from qbench import harness
    from qbench.methods.qsched_scheduler import QSchedCoefficients, apply_qsched

    cfg = make_cfg(model="toy-flux", prompts="toy:2", metrics=["psnr", "toy-acc"])
    w8 = _naive("W8A8")
    first = harness.run(cfg.replace(method_options={"label": "my-w8"}), pipe=w8.pipe, show_progress=False)
    assert (first.method["method"], first.mode, first.label) == ("external", "external", "external my-w8")
    assert first.n_generated == 2 and "external pipeline" in first.latency["kind"]
    assert first.config["method"] == "external" and first.config["method_options"]["fingerprint"] == first.method["options"]["fingerprint"]

    # the same pipeline again: its images come from the cache
    again = harness.run(cfg.replace(method_options={"label": "my-w8"}), pipe=w8.pipe, show_progress=False)
    assert again.images_dir == first.images_dir and again.n_generated == 0

    # another pipeline, and this one with another scheduler: new folders, new images
    w4 = _naive("W4A8")
    other = harness.run(cfg.replace(method_options={"label": "my-w8"}), pipe=w4.pipe, show_progress=False)  # same label on purpose
    assert other.images_dir != first.images_dir and other.n_generated == 2
    assert other.method["options"]["fingerprint"] != first.method["options"]["fingerprint"]
    apply_qsched(w8.pipe, QSchedCoefficients("ramp", (0.9, 1.1)))
    changed = harness.run(cfg.replace(method_options={"label": "my-w8"}), pipe=w8.pipe, show_progress=False)
    assert changed.images_dir not in (first.images_dir, other.images_dir) and changed.n_generated == 2
    assert not all(np.array_equal(a, b) for a, b in zip(_images(first), _images(changed)))

    # the same quantization made by qbench's own method gives the same images as the brought one,
    # and both pair with the fp run (same comparability settings)
    own = harness.run(cfg.replace(method="naive", bits="W8A8"), show_progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(_images(own), _images(first)))
    assert own.metrics["psnr"]["value"] == first.metrics["psnr"]["value"]
    fp = harness.run(cfg, show_progress=False)
    assert fp.sampling == first.sampling and fp.method["method"] == "fp"


def test_bad_inputs(make_cfg, capsys):
    from qbench import harness
    from qbench.cli import main
    from qbench.models.loader import load_model

    cfg = make_cfg(model="toy-flux", prompts="toy:1", metrics=[])
    with pytest.raises(ConfigError, match="scores the pipeline as given"):
        harness.run(cfg.replace(method="naive", bits="W8A8"), pipe=_naive("W8A8").pipe)
    lcm = load_model("toy-lcm", device="cpu")
    with pytest.raises(ConfigError, match="pipe is a StableDiffusionPipeline, but model 'toy-flux' is a FluxPipeline"):
        harness.run(cfg, pipe=lcm.pipe)
    with pytest.raises(ConfigError, match="cfg.dtype float16 but the pipeline is float32"):
        harness.run(cfg.replace(dtype="float16"), pipe=_naive("W8A8").pipe)
    with pytest.raises(QBenchError, match="does not quantize"):  # the preflight's error
        harness.run(cfg.replace(bits="W4A8"), pipe=_naive("W8A8").pipe)
    capsys.readouterr()  # drop the loading bars of the runs above
    code = main(["run", "--method", "external", "--out-dir", cfg.out_dir, "--metrics", ""])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot run from the command line" in err[0]


def test_fingerprint_sees_weights_specs_and_configs():
    from qbench.models.fingerprint import pipeline_fingerprint
    from qbench.quant.api import quant_layers

    a = _naive("W8A8", "kernel")
    fa = pipeline_fingerprint(a.pipe)
    assert pipeline_fingerprint(a.pipe) == fa
    assert pipeline_fingerprint(_naive("W8A8", "kernel").pipe) == fa  # the same content, another object
    name, layer = quant_layers(a.denoiser)[0]
    layer.s1[0] += 1e-3  # one scale
    assert pipeline_fingerprint(a.pipe) != fa
    b = _naive("W8A8", "kernel")
    from dataclasses import replace

    _, lb = quant_layers(b.denoiser)[0]
    lb.spec = replace(lb.spec, a_symmetric=not lb.spec.a_symmetric)  # no tensor changed, the activation rule did
    assert pipeline_fingerprint(b.pipe) != fa
