"""The ``torchao`` method (issue 15 §4): torchao's configs through the same harness on toy-flux,
true stored sizes of torchao's tensor subclasses, --bits mapping, one-line refusals."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from qbench.catalog import METHODS
from qbench.errors import ConfigError

RUNNABLE = {"int8dq": ("W8A8", "kernel", "Int8Tensor"), "int8dq_int4w": ("W4A8", "simulate", "IntxUnpackedToInt8Tensor"),
            "int8wo": ("W8A16", "kernel", "Int8Tensor"), "intx4wo": ("W4A16", "kernel", "IntxUnpackedToInt8Tensor")}


def _cfg(make_cfg, **kw):
    base = dict(model="toy-flux", method="torchao", prompts="toy:2", batch_size=2, metrics=["psnr"])
    base.update(kw)
    return make_cfg(**base)


@pytest.mark.parametrize("config", sorted(RUNNABLE))
def test_each_config_end_to_end_on_toy_flux(make_cfg, config):
    import torchao

    from qbench import harness
    from qbench.store import Store

    bits, mode, tensor = RUNNABLE[config]
    cfg = _cfg(make_cfg, method_options={"config": config})
    res = harness.run(cfg, show_progress=False)
    assert (res.bits, res.mode, res.label) == (bits, mode, f"torchao {config} {bits} {mode}")
    from qbench.methods.torchao import CONFIGS

    assert res.method["torchao"]["version"] == torchao.__version__
    assert res.method["torchao"]["config"].startswith(CONFIGS[config][1] + "(") and res.method_report["config"] == res.method["torchao"]["config"]
    rep = res.method_report
    assert rep["layers_quantized"] > 0 and set(rep["tensor_types"]) == {tensor}
    assert rep["bytes_after"] < rep["bytes_before"] and res.model_bytes == rep["bytes_after"]
    # per layer: torchao's bits, 16 for the layers it could not take (listed with the reason)
    by_layer = res.effective_bits["by_layer"]
    assert {n for n, v in by_layer.items() if v["w"] == 16} == {s["name"] for s in rep["skipped"]}
    assert {(v["w"], v["a"]) for v in by_layer.values() if v["w"] != 16} == {(int(bits[1]), int(bits[3:]))}
    assert res.effective_bits["effective"]["label"] == bits or (rep["skipped"] and res.effective_bits["effective"]["label"].startswith(bits[:2] + "."))
    # deployable size: the quantized tensors' stored parts (int8 codes, float scales, zero points)
    assert res.size["deploy_bytes"] < res.size["bytes_16bit"] and "tensor subclasses" in res.size["deploy_kind"]
    assert 0 < res.metrics["psnr"]["value"] <= 100
    assert ("NOT a deployment latency" in res.latency["kind"]) == (mode == "simulate")
    stored = Store(cfg.db_path).get(res.run_id)
    assert stored["mode"] == mode and stored["label"] == res.label


def test_sizes_count_what_torchao_stores():
    """module_nbytes / size_report of a torchao-quantized module = the bytes of qdata, scale and
    zero_point (not the logical float32 shape), computed here independently."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    from qbench.models.base import module_nbytes
    from qbench.quant.api import size_report

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 32, bias=False))
    quantize_(net, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    expect = 0
    for lin in (net[0], net[2]):
        w = lin.weight
        expect += sum(t.numel() * t.element_size() for t in (w.qdata, w.scale, w.zero_point) if t is not None)
    expect_bias = 96 * 4
    assert module_nbytes(net) == expect + expect_bias
    assert expect < 4 * (64 * 96 + 96 * 32) / 3  # int8 codes + per-row scales: far below the float32 weights
    rep = size_report(net)
    assert rep["bytes_16bit"] == 2 * (64 * 96 + 96 + 96 * 32)
    assert rep["deploy_bytes"] == expect + 2 * 96


def test_bits_mapping_and_refusals(make_cfg, monkeypatch):
    TorchAO = METHODS.get("torchao")
    assert TorchAO(_cfg(make_cfg, bits="W8A8")).config_name == "int8dq"
    assert TorchAO(_cfg(make_cfg, bits="W4A8")).config_name == "int8dq_int4w"
    assert TorchAO(_cfg(make_cfg, bits="W4A16", method_options={"config": "intx4wo"})).config_name == "intx4wo"
    m = TorchAO(_cfg(make_cfg, method_options={"config": "int8dq_int4w", "group_size": "64"}))
    assert m.describe()["options"] == {"config": "int8dq_int4w", "group_size": 64} and "PerGroup(group_size=64)" in m.describe()["torchao"]["config"]
    cases = [
        (dict(bits="W4A8", method_options={"config": "int8dq"}), "--bits W4A8 and -O config=int8dq (W8A8) disagree"),
        (dict(bits="W4A4"), "no config for --bits W4A4"),
        (dict(), "needs -O config="),
        (dict(mode="kernel", method_options={"config": "int8dq"}), "--mode kernel does not apply"),
        (dict(method_options={"config": "int8dq", "group_size": 64}), "group_size applies to the per-group int4 configs"),
        (dict(method_options={"config": "fp8"}), "must be one of"),
    ]
    for kw, needle in cases:
        with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            TorchAO(_cfg(make_cfg, **kw))
    # int4wo needs the package mslk: refused in one line where it is missing (as here)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mslk" else real(name, *a))
    with pytest.raises(ConfigError, match="needs the package mslk") as e:
        TorchAO(_cfg(make_cfg, bits="W4A16"))
    assert "\n" not in str(e.value) and "intx4wo" in str(e.value)


def test_cli_refusal_is_one_line(capsys, tmp_path):
    from qbench.cli import main

    code = main(["run", "--method", "torchao", "--bits", "W8A8", "-O", "config=int8dq_int4w", "--out-dir", str(tmp_path), "--metrics", ""])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "disagree" in err
