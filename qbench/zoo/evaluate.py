"""Measure what issue 6 asks of the toy models (toy-world numbers only).

``evaluate(model)``: generate the held-out ``toy:N`` prompts (seed = prompt index) and report
toy-acc per attribute; toy-CLIP score for matching captions, shuffled captions and rendered
ground truth; fd-toyclip of the trained model and of the same pipeline with a randomly
initialised denoiser; CLIP-IQA of generated vs ground-truth images.
``clipiqa_ranking()``: the fraction of (clean, degraded) ground-truth pairs of the same scene
in which CLIP-IQA ranks the clean image higher, per degradation.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from qbench.api import MetricContext


def _ctx(family: str) -> MetricContext:
    return MetricContext(device="cpu", model_family=family, resolution=32, prompt_set="toy")


def _metric(cls, family, images, prompts):
    m = cls(_ctx(family))
    m.update(images, prompts)
    return m.compute()


def ground_truth(prompts, seed: int = 99) -> list:
    from qbench.toyworld.render import render, scene_from_dict

    return [render(scene_from_dict(p.meta["scene"]).with_jitter(np.random.default_rng([seed, p.index]))) for p in prompts]


def generate(lm, prompts, batch: int = 32) -> list:
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        out += lm.generate([p.text for p in chunk], [p.index for p in chunk])
    return out


def evaluate(name: str, n: int = 148, model_path: str | None = None, untrained: bool = True, prompt_set: str = "toy") -> dict[str, Any]:
    import torch

    from qbench.metrics.clip_score import CLIPScore
    from qbench.metrics.clipiqa import CLIPIQA
    from qbench.metrics.fd_toyclip import FDToyClip
    from qbench.metrics.toy_acc import ToyAcc
    from qbench.models.loader import load_model
    from qbench.prompts import load_prompts

    lm = load_model(name, model_path=model_path, device="cpu")
    fam = lm.spec.family
    prompts = load_prompts(f"{prompt_set}:{n}")
    t0 = time.time()
    images = generate(lm, prompts)
    gen_s = time.time() - t0
    gt = ground_truth(prompts)
    perm = np.random.default_rng(0).permutation(len(prompts))
    shuffled = [prompts[int(j)] for j in perm]
    acc = _metric(ToyAcc, fam, images, prompts)
    res: dict[str, Any] = {
        "world": "toy", "model": name, "source": lm.source, "prompts": f"{prompt_set}:{n}", "n_prompts": n, "generate_s": round(gen_s, 1),
        "toy_acc": {k: round(v.value, 3) for k, v in acc.items()},
        "toy_acc_gt": round(_metric(ToyAcc, fam, gt, prompts)["toy-acc"].value, 3),
        "clip_matching": round(_metric(CLIPScore, fam, images, prompts).value, 2),
        "clip_shuffled": round(_metric(CLIPScore, fam, images, shuffled).value, 2),
        "clip_ground_truth": round(_metric(CLIPScore, fam, gt, prompts).value, 2),
        "clipiqa_generated": round(_metric(CLIPIQA, fam, images, prompts).value, 3),
        "clipiqa_ground_truth": round(_metric(CLIPIQA, fam, gt, prompts).value, 3),
        "fd_toyclip": round(_metric(FDToyClip, fam, images, prompts).value, 2),
    }
    if untrained:
        den = lm.denoiser
        torch.manual_seed(0)
        fresh = type(den).from_config(den.config).to(den.dtype)
        setattr(lm.pipe, lm.spec.denoiser, fresh)
        res["fd_toyclip_untrained"] = round(_metric(FDToyClip, fam, generate(lm, prompts), prompts).value, 2)
        setattr(lm.pipe, lm.spec.denoiser, den)
    return res


def clipiqa_ranking(n: int = 148, family: str = "toy-lcm") -> dict[str, float]:
    from qbench.metrics.clipiqa import CLIPIQAScorer
    from qbench.prompts import load_prompts
    from qbench.toyworld.render import DEGRADATIONS, degrade

    prompts = load_prompts(f"toy:{n}")
    clean = ground_truth(prompts)
    scorer = CLIPIQAScorer(_ctx(family))
    s_clean = scorer.score(clean)
    out = {}
    for k, kind in enumerate(DEGRADATIONS):
        rng = np.random.default_rng([5, k])
        s_bad = scorer.score([degrade(im, kind, rng) for im in clean])
        out[kind] = round(float(np.mean(s_clean > s_bad)), 3)
    out["all"] = round(float(np.mean(list(out.values()))), 3)
    return out
