"""Quantized pipelines that leave qbench (issue 15 §3): ``qbench export`` / ``save_quantized``
-> ``qbench.load_quantized`` / plain diffusers, byte-identical images; ``save_pretrained``
refused in one line; bad inputs.

"Byte-identical": the exported pipeline, loaded in a fresh object (and in a fresh process for the
diffusers recipe), generates the same uint8 images as the in-memory quantized pipeline it was
written from, for the same prompts and seeds.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from qbench.config import RunConfig
from qbench.errors import ConfigError, QBenchError

PROMPTS = ["a large red circle in the middle on a blue background", "a small green triangle on the left on a white background"]
SEEDS = [3, 4]


def _quantized(model: str, bits: str, mode: str, **options):
    from qbench.catalog import METHODS
    from qbench.models.loader import load_model

    m = load_model(model, device="cpu")
    method = METHODS.get("naive")(RunConfig(model=model, method="naive", bits=bits, mode=mode, method_options=options))
    method.prepare(m)
    method.convert(m)
    return m


def _pixels(model) -> np.ndarray:
    return np.stack([np.asarray(im) for im in model.generate(PROMPTS, SEEDS)])


def _reloaded(model, path):
    import qbench
    from qbench.models.base import LoadedModel

    pipe = qbench.load_quantized(str(path))
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(model.spec, pipe, "export", "cpu", model.dtype)


@pytest.mark.slow
@pytest.mark.parametrize("bits", ["W4A8", "W8A8"])
@pytest.mark.parametrize("mode", ["kernel", "simulate"])
@pytest.mark.parametrize("name", ["toy-flux", "toy-lcm"])
def test_round_trip_gives_the_same_images(name, mode, bits, tmp_path):
    from safetensors import safe_open

    from qbench.export import save_quantized
    from qbench.quant.api import quant_layers
    from qbench.quant.serialize import CONFIG_FILE, TENSORS_FILE

    m = _quantized(name, bits, mode)
    before = _pixels(m)
    doc = save_quantized(m.pipe, tmp_path / "out", meta={"note": "test"})
    den = m.spec.denoiser
    assert doc["quantized_components"][den]["modes"] == [mode] and doc["note"] == "test"
    with open(tmp_path / "out" / "model_index.json") as f:
        assert json.load(f)[den] == ["qbench.quant.serialize", "QBenchQuantized"]
    # what is stored for a quantized layer: packed codes and scales (kernel), the fake-quantized
    # float weight (simulate), never both; every layer's spec is in the quant config
    with open(tmp_path / "out" / den / CONFIG_FILE) as f:
        qcfg = json.load(f)
    layers = dict(quant_layers(m.denoiser))
    assert set(qcfg["layers"]) == set(layers)
    with safe_open(str(tmp_path / "out" / den / TENSORS_FILE), "pt") as f:
        keys = set(f.keys())
    name0 = next(iter(layers))
    assert (f"{name0}.qweight" in keys) == (mode == "kernel") and (f"{name0}.weight" in keys) == (mode == "simulate")
    again = _reloaded(m, tmp_path / "out")
    after = _pixels(again)
    assert before.dtype == after.dtype == np.uint8
    assert np.array_equal(before, after)
    got = dict(quant_layers(again.denoiser))
    assert set(got) == set(layers)
    for n, layer in layers.items():
        assert got[n].spec == layer.spec and type(got[n]) is type(layer)
        for k, t in layer._stored().items():
            assert torch.equal(got[n]._stored()[k], t), (n, k)


def test_static_activations_conv_layers_and_a_transformers_component(tmp_path):
    """Static activation scales, quantized Conv2d (toy-lcm UNet) and a quantized text encoder
    (transformers; the T5 of toy-flux has tied embeddings, stored once) survive the round trip."""
    from qbench.export import save_quantized
    from qbench.models.loader import load_model
    from qbench.quant.api import freeze_, observe_, quantize_
    from qbench.quant.serialize import load_component, save_component
    from qbench.quant.spec import QuantConfig

    lcm = load_model("toy-lcm", device="cpu")
    quantize_(lcm.denoiser, QuantConfig(bits="W8A8", mode="kernel", layer_types=("linear", "conv2d"), a_static=True, a_granularity="tensor"))
    observe_(lcm.denoiser)
    lcm.generate(PROMPTS[:1], SEEDS[:1])
    assert freeze_(lcm.denoiser) > 0
    save_component(lcm.denoiser, str(tmp_path / "unet"))
    unet = load_component(str(tmp_path / "unet"))
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    ehs = torch.randn(1, 77, lcm.denoiser.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(lcm.denoiser(x, 10, ehs).sample, unet(x, 10, ehs).sample)
    assert any(type(m).__name__ == "QuantConv2d" and m.a_scale is not None for m in unet.modules())

    # simulate: T5's feed-forward reads ``wo.weight.dtype``, which a kernel-mode layer does not have
    flux = _quantized("toy-flux", "W8A8", "simulate", components=["denoiser", "text_encoder_2"])
    before = _pixels(flux)
    doc = save_quantized(flux.pipe, tmp_path / "flux")
    assert set(doc["quantized_components"]) == {"transformer", "text_encoder_2"}
    with open(tmp_path / "flux" / "text_encoder_2" / "qbench_quant_config.json") as f:
        assert json.load(f)["aliases"]  # the tied T5 embedding, stored once
    assert np.array_equal(before, _pixels(_reloaded(flux, tmp_path / "flux")))


def _qsched_ckpt(tmp_path) -> str:
    from qbench.methods.qsched_scheduler import QSchedCoefficients, make_checkpoint, save_checkpoint

    ckpt = make_checkpoint(QSchedCoefficients("ramp", (0.93, 1.04)), steps=4, model="toy-flux", bits="W4A8", base="naive")
    return save_checkpoint(str(tmp_path / "ckpt.json"), ckpt)


RECIPE = """
import json, sys
import numpy as np, torch
import diffusers
import qbench.quant.serialize, qbench.methods.qsched_scheduler  # noqa: F401 (the recipe's first line)
pipe = diffusers.DiffusionPipeline.from_pretrained(sys.argv[1])
pipe.set_progress_bar_config(disable=True)
prompts, seeds = json.loads(sys.argv[2]), json.loads(sys.argv[3])
s = json.load(open(sys.argv[1] + "/qbench_export.json"))["sampling"]  # the model's sampling defaults, recorded
out = pipe(prompt=prompts, num_inference_steps=s["steps"], guidance_scale=s["guidance"], height=s["resolution"], width=s["resolution"],
           generator=[torch.Generator().manual_seed(x) for x in seeds], output_type="np", **s["call_kwargs"]).images
np.save(sys.argv[4], (np.clip(out, 0, 1) * 255).round().astype(np.uint8))
print(type(pipe.scheduler).__name__, pipe.scheduler.qsched_coefficients.params)
"""


@pytest.mark.slow
def test_export_with_qsched_scheduler_and_the_plain_diffusers_recipe(tmp_path):
    """``qbench.export.export`` (the CLI's path) of Q-Sched over naive W4A8 kernel: the folder
    holds the wrapped scheduler; load_quantized and the two-line diffusers recipe in a fresh
    process both give the in-memory pipeline's images; without the import diffusers refuses."""
    from qbench.catalog import METHODS
    from qbench.export import export, read_index
    from qbench.methods.qsched_scheduler import QSchedSchedulerMixin
    from qbench.models.loader import load_model

    cfg = RunConfig(model="toy-flux", method="qsched", bits="W4A8", mode="kernel", out_dir=str(tmp_path / "r"),
                    method_options={"qsched_ckpt": _qsched_ckpt(tmp_path), "progress": False})
    ref = load_model("toy-flux", device="cpu")
    method = METHODS.get("qsched")(cfg)
    method.prepare(ref)
    method.convert(ref)
    before = _pixels(ref)

    out = tmp_path / "export"
    doc = export(cfg, str(out), show_progress=False)
    index = read_index(str(out))
    assert index == json.loads(json.dumps(doc, default=str))
    assert index["method"]["method"] == "qsched" and index["method"]["coefficients"]["params"] == [0.93, 1.04]
    assert index["source"]["model"] == "toy-flux" and index["imports"] == ["qbench.quant.serialize", "qbench.methods.qsched_scheduler"]
    assert index["qbench"] and index["denoiser_size"]["deploy_vs_16bit"] < 0.3

    again = _reloaded(ref, out)
    assert isinstance(again.pipe.scheduler, QSchedSchedulerMixin)
    assert np.array_equal(before, _pixels(again))

    env = dict(os.environ)
    res = subprocess.run([sys.executable, "-c", RECIPE, str(out), json.dumps(PROMPTS), json.dumps(SEEDS), str(tmp_path / "px.npy")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "QSchedFlowMatchEulerDiscreteScheduler" in res.stdout and "0.93" in res.stdout
    assert np.array_equal(before, np.load(tmp_path / "px.npy"))

    without = RECIPE.replace("import qbench.quant.serialize, qbench.methods.qsched_scheduler", "import qbench.methods.qsched_scheduler")
    res = subprocess.run([sys.executable, "-c", without, str(out), "[]", "[]", str(tmp_path / "no.npy")], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode != 0 and "import qbench.quant.serialize before calling `from_pretrained`" in res.stderr


@pytest.mark.parametrize("mode", ["kernel", "simulate"])
def test_plain_save_pretrained_refuses_in_one_line(mode, tmp_path):
    m = _quantized("toy-flux", "W4A8", mode)
    with pytest.raises(QBenchError) as e:
        m.pipe.save_pretrained(str(tmp_path / "plain"))
    msg = str(e.value)
    assert "\n" not in msg and "qbench export" in msg and "load_quantized" in msg
    with pytest.raises(QBenchError, match="qbench export"):
        m.denoiser.state_dict()
    assert not os.path.exists(tmp_path / "plain"), "refused before anything was written (no half-written pipeline)"
    with pytest.raises(QBenchError, match="qbench export"):
        torch.save(m.denoiser.state_dict(), str(tmp_path / "sd.pt"))


def test_save_pretrained_of_a_loaded_export_refuses_up_front_and_fp_still_saves(tmp_path):
    from qbench.export import load_quantized, save_quantized
    from qbench.models.loader import load_model

    m = _quantized("toy-flux", "W8A8", "kernel")
    save_quantized(m.pipe, str(tmp_path / "exp"))
    pipe = load_quantized(str(tmp_path / "exp"))
    with pytest.raises(QBenchError, match="qbench export"):
        pipe.save_pretrained(str(tmp_path / "again"))
    assert not os.path.exists(tmp_path / "again")
    with pytest.raises(QBenchError, match="qbench export"):  # the quantized component saved on its own
        pipe.transformer.save_pretrained(str(tmp_path / "alone"))
    assert not os.path.exists(tmp_path / "alone")
    load_model("toy-flux", device="cpu").pipe.save_pretrained(str(tmp_path / "fp"))  # unquantized: saves as ever
    assert os.path.exists(tmp_path / "fp" / "model_index.json")


def test_bad_inputs(tmp_path, capsys):
    from qbench.cli import main
    from qbench.export import export, load_quantized, save_quantized
    from qbench.models.loader import load_model

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    m = _quantized("toy-flux", "W8A8", "kernel")
    with pytest.raises(QBenchError, match="exists and is not empty"):
        save_quantized(m.pipe, busy)
    with pytest.raises(QBenchError, match="not a qbench export"):
        save_quantized(m.pipe, busy, force=True)  # --force replaces earlier exports only
    assert (busy / "keep.txt").read_text() == "mine"
    save_quantized(m.pipe, tmp_path / "e1")
    save_quantized(m.pipe, tmp_path / "e1", force=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".e1")) == []  # no partial folders left
    with pytest.raises(QBenchError, match="holds no qbench-quantized layer"):
        save_quantized(load_model("toy-flux", device="cpu").pipe, tmp_path / "fp")

    with pytest.raises(QBenchError, match="not a qbench export"):
        load_quantized(str(busy))
    with pytest.raises(QBenchError, match="is not a folder"):
        load_quantized(str(tmp_path / "missing"))
    tensors = tmp_path / "e1" / "transformer" / "qbench_quantized.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(QBenchError, match="does not match the sha256"):
        load_quantized(str(tmp_path / "e1"))

    cfg = RunConfig(model="toy-flux", method="fp", out_dir=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match="does not quantize: nothing to export"):
        export(cfg, str(tmp_path / "e2"), show_progress=False)
    with pytest.raises(ConfigError, match="does not make qbench-quantized layers"):
        export(cfg.replace(method="torchao", method_options={"config": "int8dq"}), str(tmp_path / "e2"), show_progress=False)

    capsys.readouterr()  # what the loads above printed
    code = main(["export", "--method", "naive", "--bits", "W4A8", "--out-dir", str(tmp_path / "r"), str(busy)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("qbench: error:") and "--force" in err
    code = main(["export", "--method", "naive", "--bits", "W4B8", str(tmp_path / "e3")])
    assert code == 2 and "bad bit spec" in capsys.readouterr().err


def test_cli_export_writes_a_loadable_folder(tmp_path, capsys):
    from qbench.cli import main

    out = tmp_path / "w8"
    code = main(["export", "--method", "naive", "--bits", "W8A8", "--mode", "kernel", "--out-dir", str(tmp_path / "r"), "--no-progress", "--json", str(out)])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["label"] == "naive W8A8 kernel" and doc["quantized_components"]["transformer"]["quantized_layers"] > 0
    assert doc["run_config"]["bits"] == "W8A8" and doc["source"]["weights"].startswith("shipped:")
    assert oct(os.stat(out).st_mode & 0o777) != oct(0o700)  # not the temporary folder's private mode
    m = _quantized("toy-flux", "W8A8", "kernel")
    assert np.array_equal(_pixels(m), _pixels(_reloaded(m, out)))
