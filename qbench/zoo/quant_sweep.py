"""How much naive quantization hurts a toy model, bit width by bit width (toy-world numbers only).

``sweep(model)`` generates the held-out ``toy:N`` prompts (seed = prompt index) with the full-
precision denoiser and with naive round-to-nearest copies of it at each bit spec (simulate mode,
the denoiser's Linear layers, torchao conventions, docs/conventions.md), then scores every image:

* fidelity to the FP image of the same prompt and seed: PSNR (dB) and SSIM;
* JAQ (``log(CLIP/100) + 2 * CLIP-IQA`` with the toy CLIP) and toy-acc all-correct (0/1);
* fd-toyclip of the whole set against rendered ground truth.

Per-image metrics are also reported as **paired** differences to FP (mean and standard error
over prompts): the same prompt and seed under FP and under a quantized model, so prompt-to-
prompt spread cancels and small effects become measurable. ``monotone`` says, per metric,
whether every step down in bits (W8A8 -> W4A8 -> W4A4/W2A8) is worse than the one before.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any

import numpy as np

DEFAULT_BITS = ("W8A8", "W4A8", "W4A4", "W2A8")
# each step should hurt: fewer weight bits, then fewer activation bits / far fewer weight bits
ORDER = (("W8A8", "W4A8"), ("W4A8", "W4A4"), ("W4A8", "W2A8"))


def paired(values: np.ndarray, base: np.ndarray) -> dict[str, float]:
    """Mean and standard error of ``values - base`` (per prompt): ``qbench.metrics.stats.paired_arrays``."""
    from qbench.metrics.stats import paired_arrays

    return paired_arrays(values, base)


def monotone(summary: dict[str, dict[str, Any]], metric: str, higher_is_better: bool,
             per_image: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """For each step of ``ORDER``: is the lower bit width worse? With ``per_image`` values the step's
    paired difference gets a standard error and ``z`` (difference / se; |z| > 2 is resolved)."""
    steps = []
    for hi, lo in ORDER:
        if hi not in summary or lo not in summary:
            continue
        a, b = summary[hi][metric], summary[lo][metric]
        st: dict[str, Any] = {"from": hi, "to": lo, "worse": bool((b < a) if higher_is_better else (b > a)), "delta": float(b - a)}
        if per_image is not None:
            pd = paired(per_image[lo], per_image[hi])
            st["se"] = pd["se"]
            st["z"] = pd["mean"] / pd["se"] if pd["se"] > 0 else (0.0 if pd["mean"] == 0 else float(np.copysign(np.inf, pd["mean"])))
        steps.append(st)
    return {"metric": metric, "all_worse": all(s["worse"] for s in steps), "steps": steps}


def sweep(name: str = "toy-flux", n: int = 592, bits: tuple[str, ...] = DEFAULT_BITS, model_path: str | None = None,
          batch: int = 32, progress: bool = True) -> dict[str, Any]:
    import torch

    from qbench.api import MetricContext
    from qbench.errors import ConfigError
    from qbench.metrics.fd_toyclip import FDToyClip
    from qbench.metrics.fidelity import psnr_per_image, ssim_per_image
    from qbench.metrics.jaq import JAQ
    from qbench.models.loader import get_spec, load_model
    from qbench.prompts import load_prompts
    from qbench.quant.api import quantize_
    from qbench.quant.spec import BitSpec, QuantConfig
    from qbench.toyworld.checker import score as toy_score
    from qbench.zoo.evaluate import generate

    for b in bits:  # bad input fails before anything is loaded or generated
        BitSpec.parse(b)
    if not bits:
        raise ConfigError("quant sweep needs at least one bit spec, e.g. --bits W8A8,W4A8")
    if get_spec(name).family not in ("toy-lcm", "toy-flux"):
        raise ConfigError(f"quant sweep is for the toy models (toy-lcm, toy-flux), not {name!r}: it scores toy-world scenes")
    lm = load_model(name, model_path=model_path, device="cpu")
    prompts = load_prompts(f"toy:{n}")
    ctx = MetricContext(device="cpu", model_family=lm.spec.family, resolution=32, prompt_set=f"toy:{n}")
    jaq = JAQ(ctx)
    texts = [p.text for p in prompts]
    den_attr = lm.spec.denoiser
    fp_den = getattr(lm.pipe, den_attr)

    def run(label: str, den) -> dict[str, Any]:
        setattr(lm.pipe, den_attr, den)
        t0 = time.time()
        images = generate(lm, prompts, batch=batch)
        gen_s = time.time() - t0
        setattr(lm.pipe, den_attr, fp_den)
        fd = FDToyClip(ctx)
        fd.update(images, prompts)
        if progress:
            print(f"  {name} {label}: {len(images)} images in {gen_s:.0f} s", flush=True)
        return {
            "images": images,
            **{k: np.asarray(v, np.float64) for k, v in jaq.components(images, texts).items() if k in ("jaq", "alignment", "quality")},
            "acc": np.array([toy_score(im, p.meta["scene"])["all"] for im, p in zip(images, prompts)], np.float64),
            "fd_toyclip": float(fd.compute().value),
            "generate_s": gen_s,
        }

    t_all = time.time()
    with torch.inference_mode():
        res = {"fp": run("fp", fp_den)}
        for b in bits:
            q = copy.deepcopy(fp_den)
            report = quantize_(q, QuantConfig(bits=b))
            res[b] = run(b, q)
            res[b]["layers_quantized"] = report.n_quantized
            del q
    fp_imgs = res["fp"]["images"]
    summary: dict[str, dict[str, Any]] = {}
    for label, r in res.items():
        s = {
            "jaq": float(r["jaq"].mean()),
            "clip": float(r["alignment"].mean()),
            "clipiqa": float(r["quality"].mean()),
            "toy_acc": float(r["acc"].mean()),
            "toy_acc_se": float(r["acc"].std(ddof=1) / math.sqrt(len(r["acc"]))),
            "fd_toyclip": r["fd_toyclip"],
            "generate_s": round(r["generate_s"], 1),
        }
        if "layers_quantized" in r:
            s["layers_quantized"] = r["layers_quantized"]
        if label != "fp":
            psnr = psnr_per_image(r["images"], fp_imgs)
            s["psnr"] = float(np.mean(np.minimum(psnr, 100.0)))  # identical images: inf, capped at 100 dB
            s["ssim"] = float(np.mean(ssim_per_image(r["images"], fp_imgs)))
            s["jaq_vs_fp"] = paired(r["jaq"], res["fp"]["jaq"])
            s["toy_acc_vs_fp"] = paired(r["acc"], res["fp"]["acc"])
        else:
            s["psnr"], s["ssim"] = 100.0, 1.0
        summary[label] = s
    per_image = {
        "psnr": {k: np.minimum(psnr_per_image(r["images"], fp_imgs), 100.0) for k, r in res.items()},
        "ssim": {k: ssim_per_image(r["images"], fp_imgs) for k, r in res.items()},
        "toy_acc": {k: r["acc"] for k, r in res.items()},
        "jaq": {k: r["jaq"] for k, r in res.items()},
    }
    checks = [monotone(summary, m, hib, per_image.get(m)) for m, hib in
              (("psnr", True), ("ssim", True), ("fd_toyclip", False), ("toy_acc", True), ("jaq", True))]
    return {
        "world": "toy world (synthetic 32x32 scenes; numbers do not transfer to real images)",
        "model": name, "source": lm.source, "prompts": f"toy:{n}", "seeds": "prompt index",
        "quantization": "naive round-to-nearest, simulate mode (fake quantization), denoiser Linear layers; "
                        "W8A8 int8 per-channel / per-token, W4A8 int4 group 32 / int8 per-token asym, "
                        "W4A4 int4 per-channel / int4 per-token, W2A8 int2 group 32 / int8 per-token",
        "jaq": jaq.describe(), "device": "cpu", "torch": torch.__version__,
        "wall_s": round(time.time() - t_all, 1), "summary": summary, "monotone": checks,
    }


def to_markdown(result: dict[str, Any]) -> str:
    """One table per model: each bit spec's metrics, paired differences to FP with standard errors."""
    s = result["summary"]
    lines = [
        f"### {result['model']} ({result['prompts']}, seeds = {result['seeds']}, {result['wall_s']:.0f} s)",
        "",
        "| bits | PSNR to FP (dB) ↑ | SSIM to FP ↑ | fd-toyclip ↓ | toy-acc all ↑ | Δ toy-acc vs FP (±se) | JAQ ↑ | Δ JAQ vs FP (±se) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in s.items():
        da = r.get("toy_acc_vs_fp")
        dj = r.get("jaq_vs_fp")
        psnr = "—" if label == "fp" else f"{r['psnr']:.1f}"
        ssim = "—" if label == "fp" else f"{r['ssim']:.4f}"
        lines.append(
            f"| {label} | {psnr} | {ssim} | {r['fd_toyclip']:.2f} | {r['toy_acc']:.3f} ±{r['toy_acc_se']:.3f} | "
            + ("—" if da is None else f"{da['mean']:+.3f} ±{da['se']:.3f}") + f" | {r['jaq']:.4f} | "
            + ("—" if dj is None else f"{dj['mean']:+.4f} ±{dj['se']:.4f}") + " |"
        )
    lines.append("")
    for c in result["monotone"]:
        steps = ", ".join(
            f"{st['from']}→{st['to']} {'worse' if st['worse'] else 'NOT worse'} ({st['delta']:+.4g}"
            + (f", z={st['z']:+.1f}" if "z" in st else "") + ")" for st in c["steps"])
        lines.append(f"- {c['metric']}: {'monotone' if c['all_worse'] else 'not monotone'} — {steps}")
    return "\n".join(lines) + "\n"


# -- regression baseline (tests/test_regression_toy.py) --------------------------------------------
BASELINE_N = 32
BASELINE_BITS = ("W8A8", "W4A8")
#: how much worse than the committed baseline a metric may get before the regression test fails
#: (a few images may change on another CPU's float rounding; a real regression moves far more)
TOLERANCE = {"psnr": ("abs", -1.0), "ssim": ("abs", -0.005), "toy_acc": ("abs", -0.1),
             "jaq": ("abs", -0.02), "fd_toyclip": ("rel", 1.15)}


def baseline_numbers(name: str, n: int = BASELINE_N, bits: tuple[str, ...] = BASELINE_BITS) -> dict[str, Any]:
    """The numbers the regression baseline keeps for one toy model: fp and naive at ``bits``."""
    r = sweep(name, n=n, bits=bits, progress=False)
    keep = ("psnr", "ssim", "toy_acc", "jaq", "fd_toyclip")
    return {"prompts": r["prompts"], "bits": list(bits), "torch": r["torch"],
            "summary": {k: {m: round(v[m], 6) for m in keep} for k, v in r["summary"].items()}}


def regressions(baseline: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Every (setting, metric) that got worse than the baseline by more than ``TOLERANCE``."""
    bad = []
    for label, ref in baseline["summary"].items():
        cur = current["summary"].get(label)
        if cur is None:
            bad.append(f"{label}: missing")
            continue
        for metric, (kind, tol) in TOLERANCE.items():
            if label == "fp" and metric in ("psnr", "ssim"):
                continue  # fp against itself
            b, c = ref[metric], cur[metric]
            worse = c > b * tol + 0.5 if kind == "rel" else c < b + tol
            if worse:
                bad.append(f"{label} {metric}: {c:.4f} vs baseline {b:.4f}")
    return bad
