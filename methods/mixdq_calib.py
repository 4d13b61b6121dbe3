"""MixDQ calibration: the text-stream probe, metric-decoupled sensitivity and the bit allocation
(the method and its rules: ``methods/mixdq.py``; the math: :mod:`qbench.quant.allocate`; the
measurement engine: :mod:`qbench.quant.sensitivity`)."""
from __future__ import annotations

import contextlib
import fnmatch
import math
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from qbench.methods.mixdq_cost import act_widths, candidate_layers, check_feasible, weight_widths, work

from qbench.config import stable_hash
from qbench.errors import ConfigError, QBenchError
from qbench.quant import allocate as al

if TYPE_CHECKING:  # pragma: no cover
    from qbench.methods.mixdq import MixDQ

def act_only_conv(conv: Any, spec: Any) -> Any:
    """A :class:`~qbench.quant.linear.QuantConv2d` (simulate) that fake-quantizes its input rows
    as the deployed layer does (per im2col row) but keeps ``conv``'s float weights: the
    activation-only perturbation of one Conv2d."""
    import torch

    from qbench.quant.linear import QuantConv2d

    q = QuantConv2d.from_float(conv, spec)
    q.weight = torch.nn.Parameter(conv.weight.detach().reshape(conv.weight.shape[0], -1).clone(), requires_grad=False)
    return q


#: MixDQ's SSIM call (``quant_content.py``): skimage ``structural_similarity(..., win_size=511)`` on
#: its 512 px images: a uniform window (skimage's default) nearly as large as the image
MIXDQ_SSIM_WIN = 511


def whole_image_ssim(images: list[Any], prompts: list[Any], refs: list[Any]) -> list[float]:
    """Per image, SSIM as MixDQ's sensitivity scores it: ``skimage.metrics.structural_similarity``
    with a uniform window of ``min(511, the largest odd size <= the smaller image side)`` px,
    RGB channels averaged, sample covariance (skimage's defaults), data range 1 on [0, 1] floats
    (the value MixDQ's uint8 call gives). On 512 px images this is MixDQ's ``win_size=511``; on
    smaller images the same near-whole-image statistic. ``prompts`` is unused (scorer signature)."""
    from skimage.metrics import structural_similarity

    from qbench.metrics.common import to_unit_float_array

    out = []
    for a, b in zip(images, refs):
        x, y = to_unit_float_array(a, np.float64), to_unit_float_array(b, np.float64)
        side = min(x.shape[0], x.shape[1])
        win = min(MIXDQ_SSIM_WIN, side if side % 2 else side - 1)
        out.append(float(structural_similarity(x, y, channel_axis=-1, win_size=win, data_range=1.0)))
    return out


def _mse(images: list[Any], prompts: list[Any], refs: list[Any]) -> list[float]:
    return [float(np.mean((np.asarray(a, np.float64) / 255.0 - np.asarray(b, np.float64) / 255.0) ** 2)) for a, b in zip(images, refs)]


def _gathered_mean(cache: Any, recs: list[tuple[str, str, float]]) -> float:
    """Store the ``(key, prompt id, score)`` records another rank computed (those this rank's
    cache lacks) and return their mean score."""
    new = [r for r in recs if (r[0], r[1]) not in cache]
    if new:
        cache.put(new)
    return float(np.mean([r[2] for r in recs]))


def calibrate_allocation(method: MixDQ, model: Any, prompts: list[Any], ctx: Any) -> dict[str, Any]:
    """Sensitivity of every (layer, width), then the allocation; writes YAML + JSON."""
    import torch
    from qbench.methods.mixdq_alloc import allocation_yaml, overrides_of

    from qbench.quant.bos import PROBE_TEXTS, BOSAwareLinear, token_keep_mask
    from qbench.quant.linear import QuantConv2d, QuantLinear
    from qbench.quant.primitives import fake_quantize_act
    from qbench.quant.sensitivity import (
        SQNR_CAP,
        Runner,
        activation_sizes,
        capture_calls,
        first_call,
        quantized_input,
        swap_module,
    )

    t0, c0 = time.perf_counter(), time.process_time()
    den = model.denoiser
    layers = candidate_layers(method, den)
    if not layers:
        raise ConfigError("mixdq: no Linear or Conv2d layer to allocate (check include/exclude)")
    params = {n: int(m.weight.numel()) for n, m in layers.items()}
    pats = method.content_patterns(type(den).__name__)
    content = {n for n in layers if any(fnmatch.fnmatchcase(n, p) for p in pats)}
    points = check_feasible(method, params, content)  # before any sensitivity is measured
    # MixDQ weights the activation budget by each layer's input tensor size (act_ratio_config.yaml)
    asz = activation_sizes(den, list(layers), *first_call(model, PROBE_TEXTS[:1]))
    text = method.text or {}
    rule, bos_in, wrap = text.get("rule"), text.get("bos_input"), set(text.get("wrap") or []) & set(layers)
    W, A = method.bits.w, method.bits.a
    a_w = act_widths(method)
    sim = method.sim_config
    batch = method.opts["calib_batch_size"] or method.cfg.batch_size
    a_specs = {a: sim.resolve_spec(W, a) for a in a_w}
    qdesc = {k: v for k, v in sim.to_dict().items() if k not in ("overrides", "bits", "mode")}
    cache = ctx.score_cache("sensitivity", {"quantizer": qdesc, "act": {a: [s.a_symmetric, s.a_granularity] for a, s in a_specs.items()},
                                            "scores": "ssim whole-image window; sqnr: per-prompt error energies, one SQNR over the batch",
                                            "token_rule": rule, "wrap": sorted(wrap), "bos_input": None if bos_in is None else stable_hash(bos_in.tolist())},
                             batch_size=batch)
    fp: dict[str, Any] = {}

    def capture() -> None:
        ims, calls = capture_calls(den, ctx.generate, prompts, batch)
        fp["calls"] = calls
        fp.setdefault("images", ims)

    def references() -> list[Any]:
        if "images" not in fp:
            try:
                fp["images"] = ctx.fp_images(prompts)
            except QBenchError:  # outside the harness: FP images come from the capture pass
                capture()
        return fp["images"]

    def calls() -> list[Any]:
        if "calls" not in fp:
            capture()
        return fp["calls"]

    runner = Runner(prompts, ctx.generate, references, calls, den, cache, batch, reuse_prefix=method.opts["reuse_prefix"])
    def quantized(n: str, spec: Any) -> Any:
        m = layers[n]
        if not isinstance(m, torch.nn.Linear):
            return QuantConv2d.from_float(m, spec)
        return BOSAwareLinear.from_float(m, spec, rule, bos_in) if n in wrap else QuantLinear.from_float(m, spec)

    def weight_apply(n: str, b: int):
        spec = sim.resolve_spec(b, None)
        return lambda: swap_module(den, n, quantized(n, spec))

    def act_apply(n: str, a: int):
        s = a_specs[a]
        if not isinstance(layers[n], torch.nn.Linear):  # a conv: its deployed im2col rows quantized, float weights
            return lambda: swap_module(den, n, act_only_conv(layers[n], s))

        def q(x):
            keep = token_keep_mask(x, rule, bos_in) if (n in wrap and x.dim() == 3) else None
            xq = fake_quantize_act(x if keep is None else x.masked_fill(keep[..., None], 0), a, s.a_symmetric, s.a_granularity)
            return xq if keep is None else torch.where(keep[..., None], x, xq)

        return lambda: quantized_input(layers[n], q)

    # only the widths the allocation can use (mixdq_cost.weight_widths: no quality layer at W2)
    configs = [(n, kind, b) for n in sorted(layers) for kind, ws in (("w", weight_widths(method, n not in content)), ("a", a_w)) for b in ws]
    key = lambda n, kind, b: f"{'ssim' if n in content else 'err'}:{kind}{b}:{n}"
    todo = [c for c in configs if runner.missing(key(*c))]
    n_img = sum(len(runner.missing(key(*c))) for c in todo if c[0] in content)
    n_fw = sum(1 for c in todo if c[0] not in content)
    steps = method.cfg.steps or model.spec.steps
    low = [b for b in method.b_sweep if b < W - al.MIXDQ_B_BELOW - 1e-9]
    if low:  # legal (B is a budget in bits), but the mean then sits well below the --bits label
        ctx.say(f"mixdq: note: b_sweep budgets {', '.join(f'{b:g}' for b in low)} lie below MixDQ's range [W{W} - {al.MIXDQ_B_BELOW:g}, W{W}]: "
                f"the allocation's mean weight bits will be about that, under a W{W} label")
    todo_work = work(len(prompts), n_img, n_fw, steps, math.ceil(len(prompts) / batch), len(method.k_sweep) * len(method.b_sweep) + len(method.a_k_sweep),
                     method.opts["reuse_prefix"])
    ctx.say(f"mixdq: sensitivity of {len(layers)} layers ({len(content)} content: SSIM on images; {len(layers) - len(content)} quality: output SQNR) x widths "
            f"W{method.w_cands} (quality W{weight_widths(method, True)}) A{a_w}: {len(configs)} single-layer configs, {len(configs) - len(todo)} cached; to compute at most: "
            f"{todo_work['images']} images, {todo_work['forward_passes']} denoiser passes ({todo_work['what']}; the reference images are reused when cached)")
    advance = ctx.progress("mixdq sensitivity", len(configs))
    scores: dict[str, dict[str, dict[int, float]]] = {"w": {n: {} for n in layers}, "a": {n: {} for n in layers}}
    world = ctx.dist.world if ctx.dist is not None else 1
    done: list[tuple[str, str, int]] = []
    eta_said = [False]

    def measure(c: tuple[str, str, int]) -> tuple[list[tuple[str, str, float]], bool]:
        """One single-layer config's per-prompt scores (from the cache when there)."""
        n, kind, b = c
        k = key(n, kind, b)
        before = runner.computed
        apply = weight_apply(n, b) if kind == "w" else act_apply(n, b)
        v = runner.image_scores(k, apply, whole_image_ssim, "ssim", layer=n) if n in content else runner.output_error(k, apply, n)
        advance(1)
        done.append(c)
        if not eta_said[0] and runner.computed >= 2 and "ssim" in runner.seconds and "sqnr" in runner.seconds:
            eta_said[0] = True
            per = {g: runner.seconds[g] / max(1, sum(1 for d in done if (d[0] in content) == (g == "ssim"))) for g in ("ssim", "sqnr")}
            left = [d for d in configs if (key(*d), prompts[0].id) not in cache]
            eta = sum(per["ssim" if d[0] in content else "sqnr"] for d in left) / world
            ctx.say(f"mixdq: measured {runner.seconds['ssim'] + runner.seconds['sqnr']:.1f} s so far; about {eta:.0f} s of sensitivity left")
        return [(k, p.id, float(x)) for p, x in zip(prompts, v)], runner.computed > before

    # a sharded run (torchrun / accelerate) splits the configs into contiguous blocks, one per
    # rank; every rank then holds every score (and the main rank's cache file all of them)
    results = ctx.map_batches(measure, configs)
    signal = runner.signal() if any(n not in content for n in layers) else None
    for (n, kind, b), (recs, _) in zip(configs, results):
        scores[kind][n][b] = _gathered_mean(cache, recs)  # content: the mean SSIM (MixDQ's SSIM())
        if n not in content:  # quality: one SQNR over the whole batch (MixDQ's LossFunction)
            scores[kind][n][b] = al.sqnr_of_energies(signal, [r[2] for r in recs], cap=SQNR_CAP)
    t_sens, c_sens = time.perf_counter() - t0, time.process_time() - c0
    n_computed = sum(1 for _, fresh in results if fresh)
    local = {"images_generated": runner.images_generated, "forward_passes": runner.forward_passes,
             "prefix_served_calls": runner.prefix.served if runner.prefix is not None else 0}
    sens_images_here = runner.images_generated
    if ctx.dist is not None:  # the work of every rank
        local = {k: sum(part[k] for part in ctx.dist.gather(local)) for k in local}
    sens_counts = {"computed": n_computed, "reused": len(configs) - n_computed, **local}

    # -- weights: (B, k) sweep, ILP per group, image MSE picks -----------------------------------
    t1, c1 = time.perf_counter(), time.process_time()
    tol = method.opts["tolerance"]
    pairs = al.group_allocations(scores["w"], params, content, points, tol, method.w_cands, method.q_cands)
    if not pairs:
        raise QBenchError(f"mixdq: no weight allocation within +-{tol} of the swept budgets {min(method.b_sweep):.2f}..{max(method.b_sweep):.2f} "
                          f"for these layers (try -O tolerance=0.05, or other w_candidates / k_sweep)")

    def applied(full: dict[str, dict[str, Any]]):
        qc = sim.replace(overrides=overrides_of(full))

        @contextlib.contextmanager
        def cm():
            with contextlib.ExitStack() as stack:
                for n in full:
                    spec = qc.spec_for(n)
                    stack.enter_context(swap_module(den, n, quantized(n, spec)))
                yield
        return cm

    def pick(cands: list[tuple[Any, dict[str, dict[str, Any]]]], what: str) -> tuple[int, list[dict[str, Any]]]:
        uniq: dict[str, int] = {}
        rows = []
        for pt, full in cands:
            sha = stable_hash(overrides_of(full), 16)
            if sha not in uniq:
                uniq[sha] = len(uniq)
            rows.append({"B": round(pt.budget, 4), "k": round(pt.k, 4), "b_q": round(pt.b_q, 4), "b_c": round(pt.b_c, 4), "sha": sha,
                         "mean": round(al.mean_bits({n: v[what] or 16 for n, v in full.items()}, params if what == "w" else asz), 4)})
        mse: dict[str, float] = {}
        if len(uniq) > 1:
            adv = ctx.progress(f"mixdq {what} allocations (image MSE)", len(uniq))
            firsts: dict[str, dict[str, dict[str, Any]]] = {}
            for (_, full), row in zip(cands, rows):
                firsts.setdefault(row["sha"], full)

            def one(item: tuple[str, dict[str, dict[str, Any]]]) -> list[tuple[str, str, float]]:
                sha, full = item
                v = runner.image_scores(f"mse:{sha}", applied(full), _mse, "mse")
                adv(1)
                return [(f"mse:{sha}", p.id, float(x)) for p, x in zip(prompts, v)]

            # sharded runs: contiguous blocks of the distinct allocations per rank, as above
            for sha, recs in zip(firsts, ctx.map_batches(one, list(firsts.items()))):
                mse[sha] = _gathered_mean(cache, recs)
        for row in rows:
            row["mse"] = mse.get(row["sha"])
        best = min(range(len(rows)), key=lambda i: (rows[i]["mse"] if rows[i]["mse"] is not None else 0.0, -rows[i]["mean"], i))
        return best, rows

    w_full = [(pt, {n: {"w": b, "a": None} for n, b in alloc.items()}) for pt, alloc in pairs]
    wi, w_rows = pick(w_full, "w")
    w_alloc = {n: v["w"] for n, v in w_full[wi][1].items()}

    # -- activations: FP16 for the most sensitive, ILP (or uniform) for the rest -------------------
    protected: list[str] = []
    a_rows: list[dict[str, Any]] = []
    a_alloc: dict[str, int | None] = {n: None for n in layers}
    if A is not None:
        explicit = method.opts["a_fp16"] is not None
        n_fp = method.opts["a_fp16"] if explicit else math.ceil(0.01 * len(layers))
        at_a = {n: scores["a"][n][A] for n in layers}
        while True:
            protected = al.most_sensitive(at_a, content, n_fp)
            rest = [n for n in layers if n not in protected]
            if method.opts["act_alloc"] == "uniform":
                a_alloc = {n: (None if n in protected else A) for n in layers}
                break
            # rule=mixdq: the 16-bit layers are outside the A budget (MixDQ's code); loose: inside it
            target = al.act_target(A, asz, protected, method.opts["rule"]) if rest else A
            pr = {n: asz[n] for n in rest}
            # protected layers with large activations can leave the rest no positive budget: fewer then
            pts = al.split_points([target], method.a_k_sweep, pr, content & set(rest), (method.a_cands[0], method.a_cands[-1])) if target > 0 else []
            found = al.group_allocations({n: scores["a"][n] for n in rest}, pr, content & set(rest), pts, tol, method.a_cands)
            if found:
                cands = [(pt, {n: {"w": w_alloc[n], "a": (None if n in protected else alloc[n])} for n in layers}) for pt, alloc in found]
                ai, a_rows = pick(cands, "a")
                a_alloc = {n: v["a"] for n, v in cands[ai][1].items()}
                break
            if explicit or n_fp == 0:
                raise QBenchError(f"mixdq: {n_fp} activation layer(s) at 16 bits cannot fit a mean of A{A} with a_candidates {method.a_cands} "
                                  f"(+-{tol}); pass -O a_fp16=0, other a_candidates, or act_alloc=uniform")
            n_fp -= 1
    alloc = {n: {"w": w_alloc[n], "a": a_alloc[n]} for n in sorted(layers)}
    t_alloc, c_alloc = time.perf_counter() - t1, time.process_time() - c1
    mean_w = al.mean_bits(w_alloc, params)
    mean_a, mean_a_all = al.act_means(a_alloc, asz)
    chosen = dict(w_rows[wi])
    ctx.say(f"mixdq: allocation mean W{mean_w:.3f} A{mean_a:.3f} ({mean_a_all:.3f} with the 16-bit layers) (budget W{W} A{A or 16}; B={chosen['B']:.3f}, k={chosen['k']:.2f}, "
            f"{len({r['sha'] for r in w_rows})} distinct weight allocations of {len(points)} sweep points); "
            f"sensitivity {t_sens:.1f} s, allocation {t_alloc:.1f} s")

    # -- artefacts ----------------------------------------------------------------------------------
    path = method.stored_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    from qbench.calibctx import ArtefactStore
    from qbench.methods.mixdq_alloc import allocation_identity

    store = ArtefactStore(os.path.dirname(path), write=ctx.is_main)  # one writer in a sharded run
    alloc_images = runner.images_generated - sens_images_here
    if ctx.dist is not None:
        alloc_images = sum(ctx.dist.gather(alloc_images))
    stem = os.path.basename(path)[: -len(".json")]
    n_conv = sum(not isinstance(m, torch.nn.Linear) for m in layers.values())
    header = (f"MixDQ allocation (qbench mixdq) for {method.cfg.model} --bits {method.bits}: mean W{mean_w:.3f} A{mean_a:.3f} over {len(layers)} layers "
              f"(A over the quantized activations, {mean_a_all:.3f} with the {len(protected)} 16-bit ones) "
              f"({len(layers) - n_conv} Linear, {n_conv} Conv2d; rule={method.opts['rule']}; W weighted by parameters, A by input activation size)\n"
              f"chosen split: B={chosen['B']:.3f} k={chosen['k']:.3f} (b_quality={chosen['b_q']:.3f}, b_content={chosen['b_c']:.3f})\n"
              f"use: qbench run --method naive --bits {method.bits} -O layers=THIS_FILE  (or --method mixdq -O allocation=THIS_FILE, with the BOS path)")
    yaml_path = store.save_text(stem + ".yaml", allocation_yaml(alloc, method.bits, header))
    sens = {n: {"group": "content" if n in content else "quality", "params": params[n], "act_size": asz[n], "w": scores["w"][n], "a": scores["a"][n]} for n in sorted(layers)}
    result = {
        "allocation": alloc, "params": params, "act_sizes": asz, "rule": method.opts["rule"], "mean_w": round(mean_w, 4), "mean_a": round(mean_a, 4), "mean_a_all": round(mean_a_all, 4), "chosen": chosen,
        "a_fp16_layers": protected, "sweep": {"weights": w_rows, "activations": a_rows}, "sensitivity": sens,
        # what each group's scores are (a report plots each on its own axis)
        "sensitivity_scores": {"content": {"name": "SSIM vs full precision", "unit": "0-1, higher = less damage"},
                               "quality": {"name": "output SQNR", "unit": "dB, higher = less damage"}},
        "timings": {"sensitivity_s": round(t_sens, 2), "allocation_s": round(t_alloc, 2), "sensitivity_cpu_s": round(c_sens, 2), "allocation_cpu_s": round(c_alloc, 2), "by_kind_s": {k: round(v, 2) for k, v in runner.seconds.items()}},
        "counts": {"layers": len(layers), "conv2d": n_conv, "content": len(content), "quality": len(layers) - len(content), "configs": len(configs), **sens_counts,
                   "sweep_points": len(points), "distinct_allocations": len({r["sha"] for r in w_rows}),
                   "allocation_images": alloc_images},
        "calibration_prompts": [p.id for p in prompts], "yaml": yaml_path, "json": path, "key": method.allocation_key(),
        "identity": allocation_identity(method).record(),
    }
    store.save_json(os.path.basename(path), result, ctx.provenance(method.describe()))
    return result


def run_calibration(cfg: Any, *, show_progress: bool = True) -> dict[str, Any]:
    """``qbench calibrate --method mixdq``: sensitivity (reusing cached scores) and allocation,
    always recomputed; writes the YAML/JSON and returns a summary."""
    from qbench.calibctx import CalibrationContext
    from qbench.models.loader import load_model
    from qbench.preflight import calibration_prompts
    from qbench.progress import make_progress

    if cfg.method != "mixdq":
        raise ConfigError(f"this calibration is for --method mixdq, got {cfg.method!r}")
    opts = dict(cfg.method_options)
    if opts.get("allocation"):
        raise ConfigError("qbench calibrate computes an allocation; -O allocation=FILE is for qbench run")
    opts["recalibrate"] = True
    cfg = cfg.replace(method_options=opts)
    from qbench.methods.mixdq import MixDQ, _say

    method = MixDQ(cfg)
    prompts = calibration_prompts(cfg, method)
    cost = method.calibration_cost(len(prompts))
    if cost:
        _say(f"mixdq: calibrating on {method.calib_label}: {cost['images']} images, {cost.get('forward_passes', 0)} denoiser passes ({cost['what']})")
    t = time.perf_counter()
    model = load_model(cfg.model, model_path=cfg.model_path, device=cfg.device, dtype=cfg.dtype)
    with make_progress(show_progress) as progress:
        ctx = CalibrationContext(model, cfg, prompts, method_name="mixdq", progress=progress, say=_say, calib_spec=method.calib_spec)
        method.prepare(model)
        method.calibrate(model, prompts, ctx)
    info = method.calib_info
    return {
        "model": cfg.model, "bits": str(method.bits), "yaml": info["yaml"], "json": info["json"],
        "mean_w": info["mean_w"], "mean_a": info["mean_a"], "chosen": info["chosen"],
        "a_fp16_layers": info["a_fp16_layers"], "timings": info["timings"], "counts": info["counts"],
        "wall_s": round(time.perf_counter() - t, 1),
    }
