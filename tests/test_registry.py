import pytest

from qbench.catalog import METHODS, METRICS, MODELS, PROMPTS
from qbench.errors import UnknownNameError
from qbench.registry import Registry


def test_did_you_mean():
    with pytest.raises(UnknownNameError) as e:
        MODELS.get("flux-shnell")
    msg = str(e.value)
    assert "unknown model 'flux-shnell'; did you mean 'flux-schnell'?" in msg
    assert "tiny-flux" in msg  # lists the valid names


def test_unknown_without_suggestion_lists_names():
    with pytest.raises(UnknownNameError) as e:
        METHODS.get("zzzzzz")
    assert "did you mean" not in str(e.value) and "fp" in str(e.value)


def test_real_models_and_twins_registered():
    for name, tiny in [("lcm", "tiny-lcm"), ("pcm", "tiny-pcm"), ("sdxl-turbo", "tiny-sdxl-turbo"), ("flux-schnell", "tiny-flux")]:
        real = MODELS.get(name)
        twin = MODELS.get(tiny)
        assert twin.name == tiny
        assert real.hub_id and real.is_real and not twin.is_real
        # the twin keeps the real model's classes and sampling defaults, only smaller
        for field in ("pipeline_class", "scheduler_class", "denoiser", "steps", "guidance", "family"):
            assert getattr(real, field) == getattr(twin, field), field
        assert twin.resolution <= 64


def test_model_defaults_follow_design():
    assert (MODELS.get("lcm").steps, MODELS.get("lcm").guidance, MODELS.get("lcm").resolution) == (4, 8.0, 512)
    assert MODELS.get("pcm").scheduler_class == "TCDScheduler" and MODELS.get("pcm").steps == 8
    sd = MODELS.get("sdxl-turbo")
    assert sd.scheduler_class == "EulerAncestralDiscreteScheduler" and sd.scheduler_config["timestep_spacing"] == "trailing"
    fx = MODELS.get("flux-schnell")
    assert fx.scheduler_config == {"shift": 1.0, "use_dynamic_shifting": False} and fx.dtype == "bfloat16" and fx.resolution == 1024


def test_lazy_import(monkeypatch):
    r = Registry("thing")
    r.register("x", "json:dumps", "json dumps")
    assert r.get("x")([1]) == "[1]"
    r.register("broken", "no_such_module_qbench:x", "never imported until used")
    assert "broken" in r.names()
    with pytest.raises(ModuleNotFoundError):
        r.get("broken")


def test_duplicate_registration_refused():
    r = Registry("thing")
    r.register("a", "json:dumps", "")
    with pytest.raises(ValueError):
        r.register("a", "json:loads", "")


def test_registries_have_descriptions():
    for reg in (MODELS, METHODS, METRICS, PROMPTS):
        for e in reg:
            assert e.description.strip(), e.name


def test_every_plugin_loads_declares_its_options_and_describes_itself(tmp_path):
    """Walk every registry: each entry imports, each method builds from a RunConfig and describes
    itself, each metric declares typed options and preflights on the toy world with stand-ins,
    each model locates (offline: real models say which weights are missing, in one line)."""
    from qbench.api import Method, Metric, MetricContext
    from qbench.config import RunConfig
    from qbench.errors import MissingWeightsError
    from qbench.models.loader import locate_model
    from qbench.options import Opt
    from qbench.prompts import load_prompts

    for e in METHODS:
        cls = e.load()
        assert issubclass(cls, Method) and cls.name == e.name
        assert all(isinstance(o, Opt) for o in cls.OPTIONS)
        opts = {"external": {"fingerprint": "0" * 16}, "images": {"digest": "0" * 16}}.get(e.name, {})  # set by harness.run(pipe=...) / qbench score
        bits = "W4A8" if cls.uses_bits else None
        if e.name == "diffusers":  # a backend must be named; its configs are weight-only or W8A8
            opts, bits = {"backend": "torchao"}, "W8A8"
        cfg = RunConfig(model="toy-flux", method=e.name, bits=bits, out_dir=str(tmp_path), method_options=opts)
        m = cls(cfg)
        d = m.describe()
        assert d["method"] == e.name and isinstance(m.label, str) and m.mode in ("none", "simulate", "kernel", "external")
    prompts = load_prompts("toy:2")
    ctx = MetricContext(options={"standin": True}, model_family="toy-flux", cache_dir=str(tmp_path))
    for e in METRICS:
        cls = e.load()
        if e.meta.get("system"):
            continue
        assert issubclass(cls, Metric) and cls.name == e.name
        assert all(isinstance(o, Opt) for o in cls.OPTIONS)
        if e.name == "fid":
            continue  # needs a reference of real images (checked in test_bad_inputs / test_metrics_fid)
        cls.preflight(ctx, prompts)
    for e in MODELS:
        spec = e.load()
        if spec.is_real:
            with pytest.raises(MissingWeightsError, match="offline"):
                locate_model(e.name, device="cpu")
        else:
            ref = locate_model(e.name, device="cpu")
            assert ref.local_only and ref.fingerprint
