"""The declared plug-in contract (issue 19): capabilities declared in one place (no attribute
probes in harness, export or CLI), method options that compose along subclasses, ``--qsched-ckpt``
/ ``--search`` as ordinary ``-O`` options, the input pre-scale slot of quantized layers (stored by
export), export refusing forward hooks, ``qbench.methods`` loaded from the checkout in use, and a
SmoothQuant-style method added as one file (``tests/example_smoothquant.py``) exported and
reloaded byte-identically."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from qbench.api import Capabilities
from qbench.config import RunConfig
from qbench.errors import ConfigError, QBenchError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a large red circle in the middle on a blue background", "a small green triangle on the left on a white background"]
SEEDS = [3, 4]
LEGACY = ("EXPORTABLE", "EXPORT_HINT", "RUNS_FROM_CONFIG", "NEEDS_FP_CALIBRATION_IMAGES")


def _sources(*folders: str):
    for folder in folders:
        for d, _, files in os.walk(os.path.join(REPO, folder)):
            for f in files:
                if f.endswith(".py"):
                    yield os.path.join(d, f)


# -- capabilities ---------------------------------------------------------------------------------
def test_every_method_declares_capabilities_and_nothing_probes_for_them():
    from qbench.catalog import METHODS

    for e in METHODS:
        cls = e.load()
        assert isinstance(cls.CAPABILITIES, Capabilities), e.name
        assert not [a for a in LEGACY if hasattr(cls, a)], e.name
    caps = {e.name: e.load().CAPABILITIES for e in METHODS}
    assert not caps["external"].runs_from_config and not caps["external"].exportable and caps["external"].latency_kind
    assert not caps["torchao"].exportable and "torchao" in caps["torchao"].export_hint
    assert caps["mixdq"].fp_calibration_images and caps["mixdq"].calibrate_command and caps["qsched"].calibrate_command
    assert caps["naive"] == caps["fp"] == Capabilities()
    for path in _sources("qbench", "methods"):  # the old flags are gone from the code
        with open(path, encoding="utf-8") as f:
            text = f.read()
        assert not [a for a in LEGACY if a in text], path
    # harness, export and cli ask the method, never probe it with getattr / hasattr
    for rel in ("qbench/harness.py", "qbench/export.py", "qbench/cli.py"):
        with open(os.path.join(REPO, rel), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        probes = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                  and n.func.id in ("getattr", "hasattr") and n.args and ("method" in ast.unparse(n.args[0]) or ast.unparse(n.args[0]) in ("cls", "e.load()"))]
        assert probes == [], rel


def test_a_method_over_a_base_method_answers_with_the_base_capabilities(make_cfg):
    from qbench.catalog import METHODS
    from qbench.harness import _latency_kind

    qsched = METHODS.get("qsched")
    over_naive = qsched(make_cfg(model="toy-flux", method="qsched", bits="W4A8"))
    assert over_naive.capabilities.exportable and over_naive.capabilities.calibrate_command
    over_torchao = qsched(make_cfg(model="toy-flux", method="qsched", bits="W8A8", method_options={"base": "torchao"}))
    assert not over_torchao.capabilities.exportable and "torchao" in over_torchao.capabilities.export_hint
    over_mixdq = qsched(make_cfg(model="toy-flux", method="qsched", bits="W4A8", method_options={"base": "mixdq"}))
    assert over_mixdq.capabilities.fp_calibration_images
    ext = METHODS.get("external")(make_cfg(model="toy-flux", method="external", method_options={"fingerprint": "f" * 16}))
    assert _latency_kind(ext) == ext.CAPABILITIES.latency_kind
    assert _latency_kind(METHODS.get("fp")(make_cfg())) == "full precision"


def test_export_refuses_a_non_exportable_configuration_before_loading(tmp_path):
    from qbench.export import export

    cfg = RunConfig(model="toy-flux", method="torchao", bits="W8A8", out_dir=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match="torchao's own serialization") as e:
        export(cfg, str(tmp_path / "out"), show_progress=False)
    assert "\n" not in str(e.value) and not os.path.exists(tmp_path / "out")


def test_calibrate_lists_the_methods_that_declare_a_calibration_step(capsys):
    from qbench.cli import main

    assert main(["calibrate"]) == 2
    err = capsys.readouterr().err
    assert "mixdq, qsched" in err and err.count("\n") == 1
    assert main(["calibrate", "--method", "naive", "--bits", "W8A8", "--model", "toy-flux"]) != 0
    assert "has no separate calibration step" in capsys.readouterr().err


# -- options compose --------------------------------------------------------------------------------
def _subclass():
    from qbench.methods.naive import Naive

    from qbench.options import Opt

    class Smoothish(Naive):
        name = "smoothish"
        OPTIONS = (Opt("alpha", "float", 0.5, "a subclass's own option", minimum=0.0),)

    return Naive, Smoothish


def test_a_subclass_adds_options_and_consumes_its_own(make_cfg):
    Naive, Smoothish = _subclass()
    names = [o.name for o in Smoothish.OPTIONS]
    assert names == [o.name for o in Naive.OPTIONS] + ["alpha"] and [o.name for o in Smoothish.OWN_OPTIONS] == ["alpha"]
    m = Smoothish(make_cfg(model="toy-flux", method="smoothish", bits="W4A8", method_options={"alpha": "0.25", "group_size": 64}))
    assert m.own_options() == {"alpha": 0.25} and m.own_options(Naive) == {"group_size": 64}
    assert m.qconfig.group_size == 64  # naive's options still make the quantizer config; alpha never reaches it
    assert m.describe()["options"]["alpha"] == 0.25  # and the subclass's option keys its images
    default = Smoothish(make_cfg(model="toy-flux", method="smoothish", bits="W4A8"))
    assert default.describe()["options"]["alpha"] == 0.5 and default.describe() != m.describe()
    with pytest.raises(ConfigError, match="unknown method 'naive' option 'alpha'"):
        Naive(make_cfg(model="toy-flux", method="naive", bits="W4A8", method_options={"alpha": 0.5}))
    with pytest.raises(ConfigError, match="alpha must be >= 0"):
        Smoothish(make_cfg(model="toy-flux", method="smoothish", bits="W4A8", method_options={"alpha": -1}))
    from qbench.options import Opt

    with pytest.raises(TypeError, match="declares option 'group_size', which Naive declares already"):
        type("Twice", (Smoothish,), {"OPTIONS": (Opt("group_size", "int"),)})


# -- removed flags ------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, new", [
    (["run", "--method", "qsched", "--qsched-ckpt", "c.json"], "-O qsched_ckpt=FILE"),
    (["export", "OUT", "--method", "qsched", "--qsched-ckpt=c.json"], "-O qsched_ckpt=FILE"),
    (["calibrate", "--method", "qsched", "--search", "grid"], "-O search=grid|own"),
])
def test_old_flags_are_refused_naming_the_option(argv, new, capsys):
    from qbench.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and new in err and "was removed" in err


# -- the input pre-scale slot -----------------------------------------------------------------------
def _outlier_input(k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, k, generator=g)
    x[:, 3] *= 40.0  # an outlier channel, as SmoothQuant describes
    return x


@pytest.mark.parametrize("bits, mode", [("W8A8", "simulate"), ("W8A8", "kernel"), ("W4A8", "kernel"), ("W4A8", "simulate")])
def test_a_pre_scaled_layer_computes_q_of_x_times_s_with_w_over_s(bits, mode):
    from qbench.quant.api import quantize_
    from qbench.quant.linear import QuantLinear
    from qbench.quant.spec import QuantConfig

    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    s = torch.rand(64) + 0.5
    x = _outlier_input(64)
    mod = nn.Sequential(nn.Linear(64, 32))
    mod[0].load_state_dict(lin.state_dict())
    ref = nn.Sequential(nn.Linear(64, 32))
    with torch.no_grad():
        ref[0].weight.copy_(lin.weight / s)
        ref[0].bias.copy_(lin.bias)
    cfg = QuantConfig(bits=bits, mode=mode)
    plain = quantize_(nn.Sequential(nn.Linear(64, 32)), cfg)
    rep = quantize_(mod, cfg, pre_scales={"0": s})
    quantize_(ref, cfg)
    with torch.no_grad():
        assert torch.equal(mod(x), ref(x * s))  # the slot: x -> x * s before quantizing, weight W / s
        assert not torch.equal(mod(x), ref(x))
    layer = mod[0]
    assert torch.equal(layer.pre_scale, s) and layer.pre_scale.dtype == torch.float32
    assert rep.layers[0]["packed_bytes"] == plain.layers[0]["packed_bytes"] + 64 * 4
    again = QuantLinear.from_state(layer.to_config(), layer._stored())  # what export stores and reloads
    assert "pre_scale" in layer.to_config()["tensors"]
    with torch.no_grad():
        assert torch.equal(again(x), mod(x))
    bare = QuantLinear.from_state(ref[0].to_config(), ref[0]._stored())
    assert bare.pre_scale is None


def test_a_pre_scaled_conv_and_static_activations():
    from qbench.quant.api import freeze_, observe_, quantize_
    from qbench.quant.spec import QuantConfig

    torch.manual_seed(1)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    s_c = torch.rand(8) + 0.5
    x = torch.randn(2, 8, 6, 6)
    mod, ref = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1)), nn.Sequential(nn.Conv2d(8, 16, 3, padding=1))
    mod[0].load_state_dict(conv.state_dict())
    with torch.no_grad():
        ref[0].weight.copy_(conv.weight / s_c[None, :, None, None])
        ref[0].bias.copy_(conv.bias)
    cfg = QuantConfig(bits="W8A8", mode="kernel", layer_types=("conv2d",), a_static=True, a_granularity="tensor")
    quantize_(mod, cfg, pre_scales={"0": s_c.repeat_interleave(9)})  # im2col order: channel-major
    quantize_(ref, cfg)
    observe_(mod), observe_(ref)
    with torch.no_grad():
        mod(x), ref(x * s_c[None, :, None, None])  # calibration sees the pre-scaled activation
    freeze_(mod), freeze_(ref)
    assert torch.equal(mod[0].a_scale, ref[0].a_scale)
    with torch.no_grad():
        assert torch.equal(mod(x), ref(x * s_c[None, :, None, None]))


def test_pre_scales_are_checked_before_anything_changes():
    from qbench.quant.api import quant_layers, quantize_
    from qbench.quant.spec import QuantConfig

    mod = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4))
    cfg = QuantConfig(bits="W8A8", mode="simulate", exclude=("1",))
    with pytest.raises(ConfigError, match="pre_scale has 3 elements, the layer has 16"):
        quantize_(mod, cfg, pre_scales={"0": torch.ones(3)})
    with pytest.raises(ConfigError, match="finite and > 0"):
        quantize_(mod, cfg, pre_scales={"0": torch.zeros(16)})
    with pytest.raises(ConfigError, match="does not quantize, e.g. '1'"):
        quantize_(mod, cfg, pre_scales={"1": torch.ones(8)})
    assert quant_layers(mod) == []


# -- export and hooks ---------------------------------------------------------------------------------
def _naive_toy(bits: str = "W8A8", mode: str = "kernel"):
    from qbench.catalog import METHODS
    from qbench.models.loader import load_model

    m = load_model("toy-flux", device="cpu")
    method = METHODS.get("naive")(RunConfig(model="toy-flux", method="naive", bits=bits, mode=mode))
    method.prepare(m)
    method.convert(m)
    return m


def _pixels(model) -> np.ndarray:
    return np.stack([np.asarray(im) for im in model.generate(PROMPTS, SEEDS)])


def test_export_refuses_forward_hooks_it_cannot_save(tmp_path):
    from qbench.export import save_quantized
    from qbench.quant.api import quant_layers

    m = _naive_toy()
    name, layer = quant_layers(m.denoiser)[0]
    handle = layer.register_forward_pre_hook(lambda mod, args: (args[0] * 2.0,))
    with pytest.raises(QBenchError) as e:
        save_quantized(m.pipe, tmp_path / "out")
    msg = str(e.value)
    assert "\n" not in msg and f"transformer.{name}" in msg and "forward hook" in msg
    assert not os.path.exists(tmp_path / "out")
    handle.remove()
    vae_hook = m.pipe.vae.register_forward_hook(lambda mod, args, out: out)  # an unquantized component's hook is lost too
    with pytest.raises(QBenchError, match="vae.*forward hook"):
        save_quantized(m.pipe, tmp_path / "out")
    vae_hook.remove()
    save_quantized(m.pipe, tmp_path / "out")
    assert os.path.isfile(tmp_path / "out" / "qbench_export.json")


# -- qbench.methods from the checkout in use ----------------------------------------------------------
def test_methods_load_from_the_checkout_in_use(tmp_path):
    """A second checkout first on ``sys.path`` (PYTHONPATH; the same happens with the current
    folder of ``python -m pytest``) while this environment holds an editable install of another
    checkout: its ``qbench`` and its ``methods/`` both come from it. Before the fix,
    ``qbench.methods`` came from the installed checkout (setuptools' editable finder)."""
    import qbench.methods

    import qbench

    assert os.path.dirname(qbench.methods.__file__) == os.path.join(os.path.dirname(os.path.dirname(qbench.__file__)), "methods")
    probe = "import qbench, qbench.methods.probe as p; print(p.WHERE, qbench.methods.__file__)"
    checkout = tmp_path / "checkout"
    (checkout / "qbench").mkdir(parents=True)
    (checkout / "methods").mkdir()
    with open(qbench.__file__, encoding="utf-8") as f:
        (checkout / "qbench" / "__init__.py").write_text(f.read())
    (checkout / "pyproject.toml").write_text("[project]\nname = 'qbench'\n")
    (checkout / "methods" / "__init__.py").write_text("")
    (checkout / "methods" / "probe.py").write_text("WHERE = 'second-checkout'\n")
    wheel = tmp_path / "site"  # an installed wheel: qbench/methods/ is a real subpackage
    (wheel / "qbench" / "methods").mkdir(parents=True)
    (wheel / "qbench" / "__init__.py").write_text((checkout / "qbench" / "__init__.py").read_text())
    (wheel / "qbench" / "methods" / "__init__.py").write_text("")
    (wheel / "qbench" / "methods" / "probe.py").write_text("WHERE = 'wheel'\n")
    for root, where in ((checkout, "second-checkout"), (wheel, "wheel")):
        env = {**os.environ, "PYTHONPATH": str(root)}
        res = subprocess.run([sys.executable, "-c", probe], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-1500:]
        got, path = res.stdout.split()
        assert got == where and path.startswith(str(root)), res.stdout


# -- a SmoothQuant-style method as one file -------------------------------------------------------------
@pytest.fixture
def smoothquant(monkeypatch):
    """``tests/example_smoothquant.py`` registered as a plug-in (its catalog line)."""
    from qbench.catalog import METHODS
    from qbench.registry import Entry

    monkeypatch.setitem(METHODS._entries, "smoothquant",
                        Entry("smoothquant", "example_smoothquant:SmoothQuant", "SmoothQuant-style smoothing over naive", {}))
    return METHODS.get("smoothquant")


def test_smoothing_factors_follow_the_paper():
    from example_smoothquant import smoothing_factors

    act = torch.tensor([4.0, 1.0, 0.0])
    w = torch.tensor([[0.5, -2.0, 1.0], [-1.0, 0.5, 0.0]])
    s = smoothing_factors(act, w, 0.5)
    assert torch.allclose(s, torch.tensor([(4.0 ** 0.5) / (1.0 ** 0.5), 1.0 / 2.0 ** 0.5, (1e-5 ** 0.5) / (1.0 ** 0.5)]))
    assert torch.equal(smoothing_factors(act, w, 1.0), act.clamp_min(1e-5))  # alpha 1: all of it into the weights


def test_smoothing_lowers_the_error_of_an_outlier_layer():
    """What the slot is for: a layer whose input has an outlier channel, per-tensor int8
    activations: SmoothQuant's factors give a smaller output error than no smoothing (SQNR, dB)."""
    from example_smoothquant import smoothing_factors

    from qbench.quant.api import quantize_
    from qbench.quant.spec import QuantConfig

    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = _outlier_input(64, seed=2)
    cfg = QuantConfig(bits="W8A8", mode="simulate", a_granularity="tensor")

    def sqnr(pre_scale):
        mod = nn.Sequential(nn.Linear(64, 32))
        mod.load_state_dict(nn.Sequential(lin).state_dict())
        quantize_(mod, cfg, pre_scales=None if pre_scale is None else {"0": pre_scale})
        with torch.no_grad():
            y, yq = lin(x), mod(x)
        return float(10 * torch.log10(y.pow(2).mean() / (y - yq).pow(2).mean()))

    plain = sqnr(None)
    smoothed = sqnr(1.0 / smoothing_factors(x.abs().amax(0), lin.weight, 0.5))
    assert smoothed > plain + 3.0, (plain, smoothed)


def test_smoothquant_plugin_options_and_refusals(smoothquant, make_cfg, capsys):
    from qbench.cli import main

    m = smoothquant(make_cfg(model="toy-flux", method="smoothquant", bits="W8A8", method_options={"alpha": "0.7"}))
    assert m.alpha == 0.7 and m.describe()["options"]["alpha"] == 0.7 and m.calibration_prompts_n == 8
    with pytest.raises(ConfigError, match="alpha must lie in"):
        smoothquant(make_cfg(model="toy-flux", method="smoothquant", bits="W8A8", method_options={"alpha": 2}))
    with pytest.raises(ConfigError, match="leaves activations in float"):
        smoothquant(make_cfg(model="toy-flux", method="smoothquant", bits="W8A16"))
    code = main(["run", "--model", "toy-flux", "--method", "smoothquant", "--bits", "W8A8", "-O", "alpha=0.7", "--prompts", "toy:2",
                 "--calib-prompts", "toy-calib:2", "--metrics", "psnr", "--dry-run", "--json", "--out-dir", str(make_cfg().out_dir)])
    plan = json.loads(capsys.readouterr().out)
    assert code == 0 and plan["method"] == "smoothquant W8A8 simulate" and plan["calibration_prompts"] == "toy-calib:2"


@pytest.mark.slow
def test_smoothquant_plugin_exports_and_reloads_bit_identically(smoothquant, tmp_path):
    """The plug-in through ``qbench.export.export`` (the CLI's path: preflight, calibration
    prompts, prepare -> calibrate -> convert): the folder stores every layer's pre-scale; the
    reloaded pipeline draws the in-memory pipeline's images byte for byte."""
    from safetensors import safe_open

    import qbench
    from qbench.export import export
    from qbench.models.base import LoadedModel
    from qbench.models.loader import load_model
    from qbench.prompts import load_prompts
    from qbench.quant.api import quant_layers

    cfg = RunConfig(model="toy-flux", method="smoothquant", bits="W8A8", mode="kernel", calib_prompts="toy-calib:2",
                    method_options={"alpha": 0.6}, out_dir=str(tmp_path / "r"))
    doc = export(cfg, str(tmp_path / "out"), show_progress=False)
    assert doc["method"]["method"] == "smoothquant" and doc["method"]["options"]["alpha"] == 0.6
    assert doc["report"]["smoothing"]["layers"] == doc["quantized_components"]["transformer"]["quantized_layers"]

    ref = load_model("toy-flux", device="cpu")  # the same method by hand, in memory
    method = smoothquant(cfg)
    method.prepare(ref)
    method.calibrate(ref, load_prompts("toy-calib:2"))
    method.convert(ref)
    assert all(not h for _, mod in ref.denoiser.named_modules() for h in (mod._forward_pre_hooks, mod._forward_hooks))
    layers = dict(quant_layers(ref.denoiser))
    assert all(layer.pre_scale is not None for layer in layers.values())
    assert not all(torch.equal(layer.pre_scale, torch.ones_like(layer.pre_scale)) for layer in layers.values())
    with safe_open(str(tmp_path / "out" / "transformer" / "qbench_quantized.safetensors"), "pt") as f:
        for name, layer in layers.items():
            assert torch.equal(f.get_tensor(f"{name}.pre_scale"), layer.pre_scale), name

    pipe = qbench.load_quantized(str(tmp_path / "out"))
    pipe.set_progress_bar_config(disable=True)
    again = LoadedModel(ref.spec, pipe, "export", "cpu", ref.dtype)
    before, after = _pixels(ref), _pixels(again)
    assert before.dtype == after.dtype == np.uint8 and np.array_equal(before, after)
    with open(tmp_path / "out" / "transformer" / "qbench_quant_config.json") as f:
        assert all("pre_scale" in lc["tensors"] for lc in json.load(f)["layers"].values())
