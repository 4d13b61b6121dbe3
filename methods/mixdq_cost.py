"""MixDQ's calibration cost and feasibility before anything runs: the work a calibration will do
(the estimate ``--dry-run`` / ``qbench plan`` print and the progress line counts), the layer census on
the meta device, and the refusal of a budget MixDQ's allocation rule cannot reach (the method:
``methods/mixdq.py``; the calibration: ``methods/mixdq_calib.py``)."""
from __future__ import annotations

import fnmatch
import json
import math
import os
from typing import TYPE_CHECKING, Any

from qbench.errors import QBenchError
from qbench.quant import allocate as al

if TYPE_CHECKING:  # pragma: no cover
    from qbench.methods.mixdq import MixDQ


def candidate_layers(method: MixDQ, den: Any) -> dict[str, Any]:
    """The layers MixDQ allocates: every Linear of the denoiser, and (``conv``, default: MixDQ
    quantizes convolutions) every Conv2d that :class:`~qbench.quant.linear.QuantConv2d` can
    replace (grouped / non-zero-padded ones stay float), kept by include/exclude."""
    from torch import nn

    from qbench.quant.linear import conv2d_supported

    def allocatable(m: Any) -> bool:
        return isinstance(m, nn.Linear) or (method.opts["conv"] and isinstance(m, nn.Conv2d) and conv2d_supported(m) is None)

    return {n: m for n, m in den.named_modules()
            if n and allocatable(m) and not any(p.startswith("lora_") for p in n.split("."))
            and method.sim_config.spec_for(n) is not None}


def check_feasible(method: MixDQ, params: dict[str, int], content: set[str]) -> list[Any]:
    """The weight sweep's (B, k) points under the method's group rule; refuses in one line
    (:class:`QBenchError`) when there is none, naming the least mean the rule allows: under
    MixDQ's rule (quality layers >= 4 bits) a budget below ``(4 P_q + 2 P_c) / P`` cannot be met."""
    pts = al.split_points(method.b_sweep, method.k_sweep, params, content, (method.w_cands[0], method.w_cands[-1]), method.q_range)
    if pts:
        return pts
    least = al.least_mean(params, content, method.q_range[0], method.w_cands[0])
    rule = method.opts["rule"]
    why = (f"rule={rule} keeps the {len(params) - len(content)} quality layers at >= {method.q_range[0]:g} bits and the {len(content)} content layers "
           f">= {method.w_cands[0]} bits, so the parameter-weighted mean is at least {least:.2f}")
    raise QBenchError(f"mixdq: W{method.bits.w} is infeasible on {method.cfg.model} under MixDQ's allocation rule ({why}; no swept split "
                      f"B in {min(method.b_sweep):.2f}..{max(method.b_sweep):.2f}, k in {min(method.k_sweep):.2f}..{max(method.k_sweep):.2f} fits): "
                      f"use --bits W{math.ceil(least - 1e-9)}A.. or more, or -O rule=loose")


def weight_widths(method: MixDQ, quality: bool) -> list[int]:
    """The weight widths whose sensitivity the allocation can use: every ``w_candidates`` width for
    a content layer, only ``q_cands`` for a quality layer (rule=mixdq: 4 and 8, MixDQ's
    ``integer_programming.py``). The ILP never reads a score outside its candidate widths
    (:func:`qbench.quant.allocate.solve_allocation`), so measuring only these changes no
    allocation; it saves a fifth of the output-SQNR replays at the default widths."""
    return list(method.q_cands) if quality else list(method.w_cands)


def act_widths(method: MixDQ) -> list[int]:
    a = method.bits.a
    if a is None:
        return []
    return sorted(set(method.a_cands) | {a}) if method.opts["act_alloc"] == "mixed" else [a]


def work(n: int, sens_images: int, quality_configs: int, steps: int, batches: int, points: int, record: bool = False) -> dict[str, Any]:
    """The calibration's work counted one way for the estimate and the progress line.

    ``images`` = ``n`` full-precision reference images + ``sens_images`` (content layers: one
    image per prompt per (layer, width) config) + at most ``points`` allocations x ``n`` images
    (the image-MSE pick; an upper bound: equal allocations are scored once);
    ``forward_passes`` = ``quality_configs`` x ``steps`` x ``batches`` denoiser calls replayed on
    captured inputs for the output SQNR of the quality layers (no images), + one replay of them that
    records the units' full-precision outputs when ``record`` (prefix reuse: the replays, and the
    first step of every sensitivity image) and there is a config to compute; ``sensitivity_denoiser_rows``
    = ``quality_configs`` x ``n`` prompts: the replayed trajectories, each ``steps`` denoiser forwards
    of one prompt (x2 with classifier-free guidance), what ``qbench plan`` costs in FLOPs."""
    alloc = points * n
    rec = steps * batches if (record and (quality_configs or sens_images)) else 0
    passes = quality_configs * steps * batches + rec
    return {"images": n + sens_images + alloc, "reference_images": n, "sensitivity_images": sens_images, "allocation_images_max": alloc,
            "forward_passes": passes, "sensitivity_denoiser_rows": quality_configs * n + (n if rec else 0),
            "what": f"{n} full-precision reference + {sens_images} sensitivity images (content layers: SSIM) + at most {alloc} allocation images "
                    f"({points} allocations x {n}); {passes} denoiser passes = {quality_configs} quality-layer configs "
                    f"x {steps} steps x {batches} batch(es) (output SQNR, no images)" + (f" + {rec} passes recording the FP prefix (prefix reuse)" if rec else "")}


def estimate_cost(method: MixDQ, n: int) -> dict[str, Any]:
    """Images and denoiser passes of a calibration on ``n`` prompts with nothing cached (upper
    bounds; :func:`work` says what each counts), from the denoiser's config (meta device, no
    weights) when it is on disk, else from the real architecture's public config
    (:func:`qbench.costs.meta_denoiser`; the paper's hub models before any download)."""
    from qbench.models.loader import get_spec

    spec = get_spec(method.cfg.model)
    census = _census(method, spec)
    widths = len(method.w_cands) + len(act_widths(method))  # a content layer's
    q_widths = len(weight_widths(method, True)) + len(act_widths(method))  # a quality layer's
    batch = method.opts["calib_batch_size"] or method.cfg.batch_size
    steps = method.cfg.steps or spec.steps
    points = len(method.k_sweep) * len(method.b_sweep) + len(method.a_k_sweep)
    if census is None:
        return {"images": n * (1 + points), "what": f"MixDQ sensitivity (layer count known after loading: + {widths} x {n} images per content layer, "
                f"{q_widths} x {steps * math.ceil(n / batch)} denoiser passes per quality layer) and at most {points} allocations x {n} images"}
    nc, nq, params, content = census
    check_feasible(method, params, content)
    out = work(n, nc * widths * n, nq * q_widths, steps, math.ceil(n / batch), points, method.opts["reuse_prefix"])
    out["what"] = (f"MixDQ on {nc} content layers x {widths} widths + {nq} quality layers x {q_widths}: " + out["what"]
                   + "; cached scores are reused")
    return out


def _census(method: MixDQ, spec: Any) -> tuple[int, int, dict[str, int], set[str]] | None:
    import torch

    from qbench.models.loader import locate_model

    try:
        ref = locate_model(method.cfg.model, model_path=method.cfg.model_path, device="cpu")
        folder = os.path.join(ref.where, spec.denoiser)
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            cls_name = json.load(f)["_class_name"]
        import diffusers

        cls = getattr(diffusers, cls_name)
        with torch.device("meta"):
            den = cls.from_config(cls.load_config(folder))
    except (OSError, ValueError, KeyError, AttributeError, QBenchError):
        from qbench.costs import meta_denoiser

        den = meta_denoiser(spec.family)  # not on disk yet (a hub model): its public config
        if den is None:
            return None  # the count is printed after loading
        cls_name = type(den).__name__
    names = candidate_layers(method, den)
    pats = method.content_patterns(cls_name)
    content = {x for x in names if any(fnmatch.fnmatchcase(x, p) for p in pats)}
    return len(content), len(names) - len(content), {x: int(m.weight.numel()) for x, m in names.items()}, content
