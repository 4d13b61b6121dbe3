"""The ``diffusers`` method (issue 22 §4): diffusers' own quantization backends built through
``PipelineQuantizationConfig`` on a tiny twin, through the same harness (paired PSNR, sizes of
the stored tensors, latency labelled by what runs), ``qbench compare`` showing them beside
naive, and every backend that cannot run here refused in one line naming what to install."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from qbench.catalog import METHODS
from qbench.errors import ConfigError, QBenchError

#: backend, config -> (bits, the tensor type its quantized Linear weights have)
RUNNABLE = {("quanto", "int8"): ("W8A16", "WeightQBytesTensor"), ("quanto", "int4"): ("W4A16", "WeightQBitsTensor"),
            ("quanto", "int2"): ("W2A16", "WeightQBitsTensor"),
            ("torchao", "int8wo"): ("W8A16", "Int8Tensor"), ("torchao", "int8dq"): ("W8A8", "Int8Tensor"),
            ("torchao", "intx4wo"): ("W4A16", "IntxUnpackedToInt8Tensor")}
QUANTO = pytest.mark.skipif(importlib.util.find_spec("optimum") is None or importlib.util.find_spec("optimum.quanto") is None,
                            reason="optimum-quanto is not installed (pip install qbench[diffusers-backends])")
TINY = ["--model", "tiny-flux", "--prompts", "toy:2", "--metrics", "psnr", "--batch-size", "2", "--latency-warmup", "0", "--latency-repeats", "1"]


def _cfg(make_cfg, **kw):
    base = {"model": "tiny-flux", "method": "diffusers", "prompts": "toy:2", "metrics": ["psnr"]}
    base.update(kw)
    return make_cfg(**base)


@pytest.mark.parametrize("backend, config", [pytest.param(*k, marks=QUANTO) if k[0] == "quanto" else k for k in sorted(RUNNABLE)])
def test_each_backend_end_to_end_on_a_tiny_twin(make_cfg, backend, config):
    import diffusers
    from qbench.methods.diffusers_backends import version

    from qbench import harness

    bits, tensor = RUNNABLE[(backend, config)]
    res = harness.run(_cfg(make_cfg, method_options={"backend": backend, "config": config}), show_progress=False)
    assert (res.bits, res.mode, res.label) == (bits, "kernel", f"diffusers {backend} {config} {bits}")
    lib = "optimum-quanto" if backend == "quanto" else "torchao"
    d = res.method["diffusers"]
    assert d["libraries"] == {"diffusers": diffusers.__version__, lib: version(lib)} and d["backend"] == backend
    assert d["quantization_config"]["quant_method"] == backend  # diffusers' own serialization of the config
    rep = res.method_report
    comp = rep["components"]["transformer"]
    assert rep["layers_quantized"] == comp["layers_quantized"] > 0 and set(comp["tensor_types"]) == {tensor}
    assert res.model_bytes == comp["bytes_after"] < comp["bytes_before"]  # the stored tensors of the re-loaded transformer
    assert res.size["deploy_bytes"] < res.size["bytes_16bit"] and "tensor subclasses" in res.size["deploy_kind"]
    by_layer = res.effective_bits["by_layer"]
    w, a = int(bits[1]), int(bits[3:])
    assert {(v["w"], v["a"]) for v in by_layer.values() if v["w"] != 16} == {(w, a)}
    assert {n for n, v in by_layer.items() if v["w"] == 16} == {s["name"] for s in comp["skipped"]}  # layers left float, listed with why
    assert bool(comp["skipped"]) == (config == "intx4wo")
    assert 10 < res.metrics["psnr"]["value"] < 100  # paired with the full-precision images: close, not identical
    assert rep["execution"] in res.latency["kind"]
    assert rep["grad_mode"].startswith("no_grad") == (backend == "quanto" and config in ("int4", "int2"))


@QUANTO
def test_cli_run_and_compare_show_the_backends_beside_naive(tmp_path, capsys):
    from qbench.cli import main

    out = ["--out-dir", str(tmp_path)]
    runs = [["--method", "naive", "--bits", "W8A8", "--mode", "kernel"],
            ["--method", "diffusers", "-O", "backend=quanto", "--bits", "W8A16"],
            ["--method", "diffusers", "-O", "backend=torchao", "-O", "config=int8dq", "-O", "components=denoiser"]]
    for argv in runs:
        assert main(["run", *TINY, *out, *argv]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["compare", "--model", "tiny-flux", *out]) == 0
    table = capsys.readouterr().out
    for label in ("naive W8A8 kernel", "diffusers quanto int8 W8A16", "diffusers torchao int8dq W8A8", "psnr", "optimum-quanto QLinear"):
        assert label in table, table


@pytest.mark.parametrize("options, bits, device, expect", [
    ({"backend": "bitsandbytes_4bit"}, None, "cpu", "quantizes with bitsandbytes on a CUDA/XPU GPU only"),
    ({"backend": "bitsandbytes_8bit"}, "W8A8", "cpu", "on a CUDA/XPU GPU only"),
    ({"backend": "gguf"}, None, "cpu", "pip install gguf"),
    ({"backend": "modelopt"}, None, "cpu", "pip install nvidia-modelopt"),
    ({"backend": "sdnq"}, None, "cpu", "pip install sdnq"),
    ({"backend": "bfl"}, None, "cpu", "already quantized"),
    ({"backend": "auto-round"}, None, "cpu", "pip install auto-round"),
    ({"backend": "nunchaku_lite"}, None, "cpu", "already quantized"),
    ({"backend": "bnb"}, None, "cpu", "must be one of bitsandbytes_4bit, bitsandbytes_8bit, quanto, torchao, modelopt"),
    ({}, "W8A16", "cpu", "needs -O backend=bitsandbytes_4bit|bitsandbytes_8bit|quanto|torchao"),
    ({"backend": "quanto", "config": "int3"}, None, "cpu", "has no config 'int3' (configs: int8 = W8A16, int4 = W4A16, int2 = W2A16)"),
    ({"backend": "quanto"}, "W8A8", "cpu", "has no config for --bits W8A8"),
    ({"backend": "torchao", "config": "int8wo"}, "W4A16", "cpu", "--bits W4A16 and -O config=int8wo (W8A16) disagree"),
    ({"backend": "torchao", "components": "text_encoder_2"}, None, "cpu", "'text_encoder_2' is a transformers model"),
    ({"backend": "torchao", "components": "unet"}, None, "cpu", "'unet' is not a component of FluxPipeline (diffusers models: vae, transformer)"),
])
def test_refusals_are_one_line(make_cfg, options, bits, device, expect):
    with pytest.raises(ConfigError) as e:
        METHODS.get("diffusers")(_cfg(make_cfg, method_options=options, bits=bits, device=device))
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_mode_and_a_missing_package_are_refused(make_cfg, monkeypatch):
    Method = METHODS.get("diffusers")
    with pytest.raises(ConfigError, match="--mode simulate does not apply"):
        Method(_cfg(make_cfg, method_options={"backend": "quanto"}, mode="simulate"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("optimum") else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs the package optimum-quanto, which is not installed \(pip install optimum-quanto\)$"):
        Method(_cfg(make_cfg, method_options={"backend": "quanto"}))


@QUANTO
def test_configs_components_bits_and_identity(make_cfg):
    Method = METHODS.get("diffusers")
    sdxl = Method(_cfg(make_cfg, model="tiny-sdxl-turbo", method_options={"backend": "quanto", "components": "denoiser,vae"}, bits="W4A16"))
    assert sdxl.components == ("unet", "vae") and sdxl.config_name == "int4" and sdxl.bits == "W4A16"
    assert Method(_cfg(make_cfg, method_options={"backend": "torchao"}, bits="W8A8")).config_name == "int8dq"
    assert Method(_cfg(make_cfg, method_options={"backend": "torchao"})).config_name == "int8wo"  # the first listed
    # on a GPU machine bitsandbytes builds diffusers' BitsAndBytesConfig (checked here without one: --device cuda is refused later, by its own check)
    bnb4 = Method(_cfg(make_cfg, method_options={"backend": "bitsandbytes_4bit"}, device="cuda"))
    q = bnb4.describe()["diffusers"]["quantization_config"]
    assert bnb4.bits == "W4A16" and q["load_in_4bit"] and q["bnb_4bit_quant_type"] == "nf4" and q["quant_method"] == "bitsandbytes"
    bnb8 = Method(_cfg(make_cfg, method_options={"backend": "bitsandbytes_8bit"}, device="cuda"))
    assert bnb8.bits == "W8A8" and bnb8.describe()["diffusers"]["quantization_config"]["load_in_8bit"]
    assert bnb4.LIBRARIES == ("diffusers", "bitsandbytes") and not bnb4.capabilities.exportable and bnb4.capabilities.reloads_components
    # everything that changes the images changes the description (the image cache key)
    descs = [Method(_cfg(make_cfg, method_options=o)).describe() for o in (
        {"backend": "quanto"}, {"backend": "quanto", "config": "int4"}, {"backend": "torchao"}, {"backend": "quanto", "components": "vae"})]
    assert len({repr(d) for d in descs}) == len(descs)


def test_a_model_with_a_fused_lora_is_refused_before_loading(make_cfg):
    from qbench.preflight import plan_run

    with pytest.raises(QBenchError, match="fuses a LoRA into its denoiser after loading"):
        plan_run(_cfg(make_cfg, model="tiny-pcm", method_options={"backend": "quanto"}))


def test_sizes_count_what_bitsandbytes_stores():
    """module_nbytes / size_report of bitsandbytes layers (quantized on the CPU by bitsandbytes
    itself) = the packed codes plus the quant_state / SCB statistics, computed independently."""
    bnb = pytest.importorskip("bitsandbytes")
    from qbench.models.base import module_nbytes, tensor_parts
    from qbench.quant.api import size_report

    torch.manual_seed(0)
    lin = nn.Linear(128, 64)
    l4 = bnb.nn.Linear4bit(128, 64, compute_dtype=torch.float32, quant_type="nf4")
    l4.load_state_dict(lin.state_dict())
    l4 = l4.to("cpu")  # bitsandbytes quantizes on the move
    w = l4.weight
    assert w.bnb_quantized and w.numel() == 128 * 64 // 2
    stats = [t for t in w.quant_state.as_dict(packed=False).values() if isinstance(t, torch.Tensor)]
    assert stats and sorted(p.numel() * p.element_size() for p in tensor_parts(w)[1:]) == sorted(t.numel() * t.element_size() for t in stats)
    expect = w.numel() + sum(t.numel() * t.element_size() for t in stats) + 64 * 4  # codes, statistics, float32 bias
    assert module_nbytes(l4) == expect < 128 * 64 * 4 / 3
    rep = size_report(l4)
    assert rep["bytes_16bit"] == 2 * (128 * 64 + 64)  # the float weight it stands for, not its packed uint8 count
    l8 = bnb.nn.Linear8bitLt(128, 64, has_fp16_weights=False)
    l8.load_state_dict(lin.state_dict())
    l8 = l8.to("cpu")
    assert l8.weight.dtype == torch.int8 and l8.weight.SCB is not None
    assert module_nbytes(l8) == 128 * 64 + l8.weight.SCB.numel() * l8.weight.SCB.element_size() + 64 * 4
