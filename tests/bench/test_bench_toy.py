"""pytest-benchmark suite: end-to-end generation of the shipped toy models (the speed and memory
half of the regression check; the quality half is tests/test_regression_toy.py).

One image at batch 1, the model's 4 steps, prompt ``toy:1`` (what ``qbench run`` times as
latency), for full precision and naive W8A8 / W4A8 in ``kernel`` mode (real int8 GEMMs: simulate
mode's fake quantization is not a deployment latency). The methods are applied as the harness
applies them (``prepare -> calibrate -> convert`` of the registered method). ``extra_info`` keeps
the peak memory of one generation: process peak RSS (VmHWM, reset first) minus the RSS just
before it, after a flush (MiB), and the denoiser's deployable bytes.

Run with ``make bench`` (``qbench regress --speed``: compares with tests/bench/baseline.json and
fails on a median more than the measured noise slower, or more memory than the measured noise).
"""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.bench

CELLS = [("fp", None), ("naive", "W8A8"), ("naive", "W4A8")]
_LOADED: dict = {}


def _model(name: str, method: str, bits: str | None):
    from qbench.config import RunConfig
    from qbench.models.loader import load_model
    from qbench.preflight import plan_run

    key = (name, method, bits)
    if key not in _LOADED:
        cfg = RunConfig(model=name, method=method, bits=bits, mode="kernel" if bits else None, prompts="toy:1", metrics=[], device="cpu")
        plan = plan_run(cfg)
        model = load_model(name, ref=plan.ref)
        plan.method.prepare(model)
        plan.method.calibrate(model, [], None)
        plan.method.convert(model)
        _LOADED.clear()  # one model in memory at a time: memory numbers of one cell do not include another's
        _LOADED[key] = (model, plan.prompts[0])
    return _LOADED[key]


@pytest.mark.parametrize("method,bits", CELLS, ids=[m if b is None else f"{m}-{b}" for m, b in CELLS])
@pytest.mark.parametrize("name", ["toy-flux", "toy-lcm"])
def test_toy_generate(benchmark, name, method, bits):
    import torch

    from qbench.measure import PeakMemory, flush, process_rss
    from qbench.quant.api import size_report

    model, prompt = _model(name, method, bits)

    def generate():
        return model.generate([prompt.text], [42 + prompt.index], steps=None, guidance=None, resolution=None)

    with torch.inference_mode():
        generate()  # warm-up
        flush("cpu")
        before = process_rss()
        with PeakMemory("cpu", baseline=before) as mem:
            images = generate()
        benchmark.group = f"toy generate {name}"
        benchmark.extra_info.update(model=name, method=method, bits=bits, mode="kernel" if bits else "none",
                                    peak_generate_mib=round(mem.result.get("peak_above_baseline_bytes", 0) / 2**20, 2),
                                    deploy_bytes=size_report(model.denoiser).get("deploy_bytes"), threads=torch.get_num_threads())
        benchmark(generate)
    assert len(images) == 1 and images[0].size == (32, 32)
