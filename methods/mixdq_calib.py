"""MixDQ calibration: the text-stream probe, metric-decoupled sensitivity and the bit allocation
(the method and its rules: ``methods/mixdq.py``; the math: :mod:`qbench.quant.allocate`; the
measurement engine: :mod:`qbench.quant.sensitivity`)."""
from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from qbench.config import stable_hash
from qbench.errors import ConfigError, QBenchError
from qbench.quant import allocate as al

if TYPE_CHECKING:  # pragma: no cover
    from qbench.methods.mixdq import MixDQ

#: prompts of the text-stream probe (is token 0 the same for different prompts?)
PROBE_TEXTS = ["", "a photo of a cat", "a red circle on a blue background", "two people riding bicycles down a city street at night"]


def _tokenizer_bos(pipe: Any) -> dict[str, Any]:
    out = {}
    for attr in ("tokenizer", "tokenizer_2"):
        tok = getattr(pipe, attr, None)
        if tok is None:
            continue
        bos = getattr(tok, "bos_token_id", None)
        ids = tok("a").input_ids
        out[attr] = {"class": type(tok).__name__, "bos_token_id": bos, "adds_bos": bool(bos is not None and ids and ids[0] == bos)}
    return out


def probe_text_stream(method: MixDQ, model: Any) -> dict[str, Any]:
    """Which layers read the text embedding, is its token 0 prompt-independent, which rule applies.

    One generation of :data:`PROBE_TEXTS` is stopped at the first denoiser call; the denoiser then
    runs once on it (full precision) with hooks. ``bos_input``: token 0's embedding (rule bos)."""
    from qbench.quant.bos import text_fed_layers, token0_analysis
    from qbench.quant.sensitivity import first_call

    args, kwargs = first_call(model, PROBE_TEXTS)
    fed = text_fed_layers(model.denoiser, args, kwargs)
    info: dict[str, Any] = {"layers": sorted(fed), "tokenizers": _tokenizer_bos(model.pipe), "wrap": [], "rule": None}
    if not fed:
        info["note"] = "no Linear layer reads the text embedding directly: nothing BOS-aware"
        return info
    x = next(iter(fed.values()))
    info.update(token0_analysis(x))
    diff = f"max relative difference of token 0 between {x.shape[0]} probe prompts {info['max_rel_diff']:.3g}"
    if not method.opts["bos"]:
        info["note"] = f"BOS-aware layers off (-O bos=false); {diff}"
    elif info["prompt_independent"]:
        info.update(rule="bos", wrap=sorted(fed), bos_input=x[0, 0].detach().clone())
        info["note"] = f"token 0 is prompt-independent ({diff}; max|token 0| / median max|token| = {info['outlier_ratio']:.2f}): its k/v computed once in full precision and cached"
    else:
        rule = method.opts["text_token_rule"]
        info["note"] = (f"no prompt-independent BOS in this text stream ({diff}): its encoder is bidirectional (T5 on FLUX; FLUX.1's own "
                        f"T5 tokenizer adds no BOS at all), so nothing can be cached; text_token_rule={rule}")
        if rule != "none":
            info.update(rule=rule, wrap=sorted(fed))
    return info


def candidate_layers(method: MixDQ, den: Any) -> dict[str, Any]:
    """The Linear layers MixDQ allocates: every Linear of the denoiser kept by include/exclude."""
    from torch import nn

    return {n: m for n, m in den.named_modules()
            if n and isinstance(m, nn.Linear) and not any(p.startswith("lora_") for p in n.split("."))
            and method.sim_config.spec_for(n) is not None}


def act_widths(method: MixDQ) -> list[int]:
    a = method.bits.a
    if a is None:
        return []
    return sorted(set(method.a_cands) | {a}) if method.opts["act_alloc"] == "mixed" else [a]


def work(n: int, sens_images: int, quality_configs: int, steps: int, batches: int, points: int) -> dict[str, Any]:
    """The calibration's work counted one way for the estimate and the progress line.

    ``images`` = ``n`` full-precision reference images + ``sens_images`` (content layers: one
    image per prompt per (layer, width) config) + at most ``points`` allocations x ``n`` images
    (the image-MSE pick; an upper bound: equal allocations are scored once);
    ``forward_passes`` = ``quality_configs`` x ``steps`` x ``batches`` denoiser calls replayed on
    captured inputs for the output SQNR of the quality layers (no images)."""
    alloc = points * n
    return {"images": n + sens_images + alloc, "reference_images": n, "sensitivity_images": sens_images, "allocation_images_max": alloc,
            "forward_passes": quality_configs * steps * batches,
            "what": f"{n} full-precision reference + {sens_images} sensitivity images (content layers: SSIM) + at most {alloc} allocation images "
                    f"({points} allocations x {n}); {quality_configs * steps * batches} denoiser passes = {quality_configs} quality-layer configs "
                    f"x {steps} steps x {batches} batch(es) (output SQNR, no images)"}


def estimate_cost(method: MixDQ, n: int) -> dict[str, Any]:
    """Images and denoiser passes of a calibration on ``n`` prompts with nothing cached (upper
    bounds; :func:`work` says what each counts), from the denoiser's config (meta device, no
    weights) when it is on disk."""
    from qbench.models.loader import get_spec

    spec = get_spec(method.cfg.model)
    census = _census(method, spec)
    widths = len(method.w_cands) + len(act_widths(method))
    batch = method.opts["calib_batch_size"] or method.cfg.batch_size
    steps = method.cfg.steps or spec.steps
    points = len(method.k_sweep) * len(method.b_sweep) + len(method.a_k_sweep)
    if census is None:
        return {"images": n * (1 + points), "what": f"MixDQ sensitivity (layer count known after loading: + {widths} x {n} images per content layer, "
                f"{widths} x {steps * math.ceil(n / batch)} denoiser passes per quality layer) and at most {points} allocations x {n} images"}
    nc, nq = census
    out = work(n, nc * widths * n, nq * widths, steps, math.ceil(n / batch), points)
    out["what"] = f"MixDQ on {nc} content + {nq} quality layers x {widths} widths: " + out["what"] + "; cached scores are reused"
    return out


def _census(method: MixDQ, spec: Any) -> tuple[int, int] | None:
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
        return None  # not on disk yet (a hub model): the count is printed after loading
    names = candidate_layers(method, den)
    pats = method.content_patterns(cls_name)
    nc = sum(any(fnmatch.fnmatchcase(x, p) for p in pats) for x in names)
    return nc, len(names) - nc


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

    from qbench.quant.bos import BOSAwareLinear, token_keep_mask
    from qbench.quant.linear import QuantLinear
    from qbench.quant.primitives import fake_quantize_act
    from qbench.quant.sensitivity import (
        Runner,
        capture_calls,
        quantized_input,
        swap_module,
    )

    t0, c0 = time.perf_counter(), time.process_time()
    den = model.denoiser
    layers = candidate_layers(method, den)
    if not layers:
        raise ConfigError("mixdq: no Linear layer to allocate (check include/exclude)")
    params = {n: int(m.weight.numel()) for n, m in layers.items()}
    pats = method.content_patterns(type(den).__name__)
    content = {n for n in layers if any(fnmatch.fnmatchcase(n, p) for p in pats)}
    text = method.text or {}
    rule, bos_in, wrap = text.get("rule"), text.get("bos_input"), set(text.get("wrap") or []) & set(layers)
    W, A = method.bits.w, method.bits.a
    a_w = act_widths(method)
    sim = method.sim_config
    batch = method.opts["calib_batch_size"] or method.cfg.batch_size
    a_specs = {a: sim.resolve_spec(W, a) for a in a_w}
    qdesc = {k: v for k, v in sim.to_dict().items() if k not in ("overrides", "bits", "mode")}
    cache = ctx.score_cache("sensitivity", {"quantizer": qdesc, "act": {a: [s.a_symmetric, s.a_granularity] for a, s in a_specs.items()},
                                            "token_rule": rule, "wrap": sorted(wrap), "bos_input": None if bos_in is None else stable_hash(bos_in.tolist())})
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

    runner = Runner(prompts, ctx.generate, references, calls, den, cache, batch)
    ssim = ctx.scorer("ssim")

    def weight_apply(n: str, b: int):
        spec = sim.resolve_spec(b, None)
        return lambda: swap_module(den, n, BOSAwareLinear.from_float(layers[n], spec, rule, bos_in) if n in wrap else QuantLinear.from_float(layers[n], spec))

    def act_apply(n: str, a: int):
        s = a_specs[a]

        def q(x):
            keep = token_keep_mask(x, rule, bos_in) if (n in wrap and x.dim() == 3) else None
            xq = fake_quantize_act(x if keep is None else x.masked_fill(keep[..., None], 0), a, s.a_symmetric, s.a_granularity)
            return xq if keep is None else torch.where(keep[..., None], x, xq)

        return lambda: quantized_input(layers[n], q)

    configs = [(n, kind, b) for n in sorted(layers) for kind, ws in (("w", method.w_cands), ("a", a_w)) for b in ws]
    key = lambda n, kind, b: f"{'ssim' if n in content else 'sqnr'}:{kind}{b}:{n}"
    todo = [c for c in configs if runner.missing(key(*c))]
    n_img = sum(len(runner.missing(key(*c))) for c in todo if c[0] in content)
    n_fw = sum(1 for c in todo if c[0] not in content)
    steps = method.cfg.steps or model.spec.steps
    low = [b for b in method.b_sweep if b < W - al.MIXDQ_B_BELOW - 1e-9]
    if low:  # legal (B is a budget in bits), but the mean then sits well below the --bits label
        ctx.say(f"mixdq: note: b_sweep budgets {', '.join(f'{b:g}' for b in low)} lie below MixDQ's range [W{W} - {al.MIXDQ_B_BELOW:g}, W{W}]: "
                f"the allocation's mean weight bits will be about that, under a W{W} label")
    todo_work = work(len(prompts), n_img, n_fw, steps, math.ceil(len(prompts) / batch), len(method.k_sweep) * len(method.b_sweep) + len(method.a_k_sweep))
    ctx.say(f"mixdq: sensitivity of {len(layers)} layers ({len(content)} content: SSIM on images; {len(layers) - len(content)} quality: output SQNR) x widths "
            f"W{method.w_cands} A{a_w}: {len(configs)} single-layer configs, {len(configs) - len(todo)} cached; to compute at most: "
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
        v = runner.image_scores(k, apply, ssim, "ssim") if n in content else runner.output_sqnr(k, apply)
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
    for (n, kind, b), (recs, _) in zip(configs, results):
        scores[kind][n][b] = _gathered_mean(cache, recs)
    t_sens, c_sens = time.perf_counter() - t0, time.process_time() - c0
    n_computed = sum(1 for _, fresh in results if fresh)
    local = {"images_generated": runner.images_generated, "forward_passes": runner.forward_passes}
    sens_images_here = runner.images_generated
    if ctx.dist is not None:  # the work of every rank
        local = {k: sum(part[k] for part in ctx.dist.gather(local)) for k in local}
    sens_counts = {"computed": n_computed, "reused": len(configs) - n_computed, **local}

    # -- weights: (B, k) sweep, ILP per group, image MSE picks -----------------------------------
    t1, c1 = time.perf_counter(), time.process_time()
    tol = method.opts["tolerance"]
    points = al.split_points(method.b_sweep, method.k_sweep, params, content, (method.w_cands[0], method.w_cands[-1]))
    pairs = al.group_allocations(scores["w"], params, content, points, tol, method.w_cands)
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
                    new = BOSAwareLinear.from_float(layers[n], spec, rule, bos_in) if n in wrap else QuantLinear.from_float(layers[n], spec)
                    stack.enter_context(swap_module(den, n, new))
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
                         "mean": round(al.mean_bits({n: v[what] or 16 for n, v in full.items()}, params), 4)})
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
            target = al.rest_budget(A, params, protected) if rest else A
            pr = {n: params[n] for n in rest}
            pts = al.split_points([target], method.a_k_sweep, pr, content & set(rest), (method.a_cands[0], method.a_cands[-1]))
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
    mean_a = al.mean_bits({n: 16 if a is None else a for n, a in a_alloc.items()}, params)
    chosen = dict(w_rows[wi])
    ctx.say(f"mixdq: allocation mean W{mean_w:.3f} A{mean_a:.3f} (budget W{W} A{A or 16}; B={chosen['B']:.3f}, k={chosen['k']:.2f}, "
            f"{len({r['sha'] for r in w_rows})} distinct weight allocations of {len(points)} sweep points); "
            f"sensitivity {t_sens:.1f} s, allocation {t_alloc:.1f} s")

    # -- artefacts ----------------------------------------------------------------------------------
    path = method.stored_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    from qbench.calibctx import ArtefactStore

    store = ArtefactStore(os.path.dirname(path), write=ctx.is_main)  # one writer in a sharded run
    alloc_images = runner.images_generated - sens_images_here
    if ctx.dist is not None:
        alloc_images = sum(ctx.dist.gather(alloc_images))
    stem = os.path.basename(path)[: -len(".json")]
    header = (f"MixDQ allocation (qbench mixdq) for {method.cfg.model} --bits {method.bits}: mean W{mean_w:.3f} A{mean_a:.3f} over {len(layers)} Linear layers\n"
              f"chosen split: B={chosen['B']:.3f} k={chosen['k']:.3f} (b_quality={chosen['b_q']:.3f}, b_content={chosen['b_c']:.3f})\n"
              f"use: qbench run --method naive --bits {method.bits} -O layers=THIS_FILE  (or --method mixdq -O allocation=THIS_FILE, with the BOS path)")
    yaml_path = store.save_text(stem + ".yaml", allocation_yaml(alloc, method.bits, header))
    sens = {n: {"group": "content" if n in content else "quality", "params": params[n], "w": scores["w"][n], "a": scores["a"][n]} for n in sorted(layers)}
    result = {
        "allocation": alloc, "params": params, "mean_w": round(mean_w, 4), "mean_a": round(mean_a, 4), "chosen": chosen,
        "a_fp16_layers": protected, "sweep": {"weights": w_rows, "activations": a_rows}, "sensitivity": sens,
        "timings": {"sensitivity_s": round(t_sens, 2), "allocation_s": round(t_alloc, 2), "sensitivity_cpu_s": round(c_sens, 2), "allocation_cpu_s": round(c_alloc, 2), "by_kind_s": {k: round(v, 2) for k, v in runner.seconds.items()}},
        "counts": {"layers": len(layers), "content": len(content), "quality": len(layers) - len(content), "configs": len(configs), **sens_counts,
                   "sweep_points": len(points), "distinct_allocations": len({r["sha"] for r in w_rows}),
                   "allocation_images": alloc_images},
        "calibration_prompts": [p.id for p in prompts], "yaml": yaml_path, "json": path, "key": method.allocation_key(),
    }
    store.save_json(os.path.basename(path), result, ctx.provenance(method.describe()))
    return result
