"""The naive method end to end through the harness on every tiny twin, both modes, W8A8 and W4A8.

Checks what is stored: mode, bits, the denoiser's byte size (kernel: the packed size reported by
quantize_; simulate: unchanged float size) and the method's recorded options.
"""
from __future__ import annotations

import pytest

from qbench.errors import ConfigError

TWINS = ["tiny-lcm", "tiny-pcm", "tiny-sdxl-turbo", "tiny-flux"]


def _run(make_cfg, model, bits, mode, **kw):
    from qbench import harness

    cfg = make_cfg(model=model, method="naive", bits=bits, mode=mode, prompts="coco2017:1", batch_size=1, steps=2, **kw)
    return cfg, harness.run(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["simulate", "kernel"])
@pytest.mark.parametrize("bits", ["W8A8", "W4A8"])
@pytest.mark.parametrize("model", TWINS)
def test_naive_runs_and_stores_mode_bits_size(make_cfg, model, bits, mode):
    from qbench.store import Store

    cfg, res = _run(make_cfg, model, bits, mode)
    rep = res.method_report
    assert res.mode == mode and res.bits == bits
    assert rep["layers_quantized"] > 0
    den = rep["components"]["denoiser"]
    assert den["bits_by_layer_count"] == {bits: rep["layers_quantized"]}
    assert res.model_bytes == den["bytes_after"]
    if mode == "kernel":
        assert res.model_bytes == den["bytes_packed"] < den["bytes_before"]
        from qbench.quant.backends import selection

        assert rep["kernel_path"].startswith(f"cpu {selection('cpu').path}:")  # the path chosen for this CPU
    else:
        assert res.model_bytes == den["bytes_before"] and rep["kernel_path"] is None
    stored = Store(cfg.db_path).get(res.run_id)
    text = repr(stored)
    assert mode in text and bits in text and str(res.model_bytes) in text
    assert res.method["options"]["group_size"] == 32 and res.method["options"]["components"] == ["denoiser"]


def test_naive_w4a8_kernel_tiny_flux_fast(make_cfg):
    """The issue's acceptance command, kept in the default (non-slow) run."""
    _, res = _run(make_cfg, "tiny-flux", "W4A8", "kernel")
    assert res.mode == "kernel" and res.bits == "W4A8"
    den = res.method_report["components"]["denoiser"]
    assert res.model_bytes == den["bytes_packed"] < den["bytes_before"]
    assert res.method["options"]["group_scales"] == "auto"


def test_naive_layer_override_file_and_components(make_cfg, tmp_path):
    layers = tmp_path / "layers.yaml"
    layers.write_text("proj_out: fp16\ntransformer_blocks.0.ff.net.2: {w: 8, a: 8}\n")
    _, res = _run(make_cfg, "tiny-flux", "W4A8", "simulate", method_options={"layers": str(layers)})
    counts = res.method_report["components"]["denoiser"]["bits_by_layer_count"]
    assert counts.get("W8A8") == 1
    assert res.method["options"]["overrides"]["denoiser"]["proj_out"] == "fp16"


def test_naive_requires_bits_and_valid_options(make_cfg):
    from qbench.catalog import METHODS

    Naive = METHODS.get("naive")
    with pytest.raises(ConfigError, match="needs --bits"):
        Naive(make_cfg(method="naive"))
    with pytest.raises(ConfigError, match="unknown method 'naive' option 'groupsize'; did you mean 'group_size'"):
        Naive(make_cfg(method="naive", bits="W4A8", method_options={"groupsize": 32}))
    with pytest.raises(ConfigError, match="bad bit spec"):
        Naive(make_cfg(method="naive", bits="W4B8"))
    with pytest.raises(ConfigError, match="component"):
        Naive(make_cfg(method="naive", bits="W4A8", method_options={"layers": {"vae:decoder.conv_in": 8}}))
    m = Naive(make_cfg(method="naive", bits="w4a8", mode="kernel", method_options={"group_size": "64", "a_static": "false"}))
    d = m.describe()
    assert (d["method"], d["bits"], d["mode"]) == ("naive", "W4A8", "kernel")
    assert d["options"]["group_size"] == 64 and m.label == "naive W4A8 kernel"


def test_effective_bits_of_a_mixed_map(make_cfg):
    """A run keeps its bit label and the parameter-weighted effective bits with the whole map."""
    from qbench.harness import run

    res = run(make_cfg(model="toy-flux", prompts="toy:1", method="naive", bits="W4A8",
                       method_options={"layers": {"proj_out": "fp16", "transformer_blocks.0.ff.net.2": 8}}), show_progress=False)
    eff, bm = res.effective_bits["effective"], res.effective_bits["by_layer"]
    assert res.bits == "W4A8" and bm["proj_out"] == {"w": 16, "a": 16, "params": bm["proj_out"]["params"]}
    assert bm["transformer_blocks.0.ff.net.2"]["w"] == 8
    want = sum(v["w"] * v["params"] for v in bm.values()) / sum(v["params"] for v in bm.values())
    assert abs(eff["w"] - want) < 1e-12 and 4 < eff["w"] < 16 and eff["label"] == f"W{eff['w']:.2f}A{eff['a']:.2f}"
    uniform = run(make_cfg(model="toy-flux", prompts="toy:1", method="naive", bits="W4A8"), show_progress=False)
    assert uniform.effective_bits["effective"]["label"] == "W4A8"


def test_simulated_size_is_the_kernel_formats_size(make_cfg):
    """A simulate run reports the bytes kernel mode stores for the same layers (integer group
    scales), not the size of simulate's float-group-scale format, which has no kernel."""
    from qbench.harness import run

    sizes = {m: run(make_cfg(model="toy-flux", prompts="toy:1", method="naive", bits="W4A8", mode=m), show_progress=False).size
             for m in ("simulate", "kernel")}
    assert sizes["simulate"]["deploy_bytes"] == sizes["kernel"]["deploy_bytes"]
    assert sizes["simulate"]["deploy_kind"].startswith("simulated") and sizes["kernel"]["deploy_kind"].startswith("packed")
    assert sizes["kernel"]["deploy_vs_16bit"] < 0.29
