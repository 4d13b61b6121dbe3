"""Paired per-prompt comparison of qbench runs on toy-world prompts (reports/qsched-toy.md).

    python reports/scripts/paired.py --prompts toy:148 RUNS_DIR/fp.json A.json:B.json [C.json:D.json ...]

Each ``*.json`` is the output of ``qbench run --json`` (it names the run's image directory). For
each pair A:B it loads both runs' images prompt by prompt (same prompt, same seed) and prints the
mean and standard error of B - A for JAQ (toy CLIP), toy-acc all-correct and PSNR to the first
(reference, usually fp) run, and B's and A's fd-toyclip. Toy-world numbers only.
"""
from __future__ import annotations

import argparse
import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", required=True)
    ap.add_argument("reference")
    ap.add_argument("pairs", nargs="+")
    a = ap.parse_args()

    import numpy as np
    from PIL import Image

    from qbench.api import MetricContext
    from qbench.metrics.fd_toyclip import FDToyClip
    from qbench.metrics.fidelity import psnr_per_image
    from qbench.metrics.jaq import JAQ
    from qbench.prompts import load_prompts
    from qbench.store import _SAFE
    from qbench.toyworld.checker import score

    prompts = load_prompts(a.prompts)
    cache: dict[str, dict] = {}

    def run(path: str) -> dict:
        if path in cache:
            return cache[path]
        d = json.load(open(path))
        seed = d["config"]["seed"]
        ims = [Image.open(os.path.join(d["images_dir"], f"{_SAFE.sub('_', p.id)}-s{seed + p.index}.png")).convert("RGB")
               for p in prompts]
        fam = "toy-lcm" if "toy-lcm" in d["config"]["model"] else "toy-flux"
        ctx = MetricContext(device="cpu", model_family=fam, resolution=32, prompt_set=a.prompts)
        fd = FDToyClip(ctx)
        fd.update(ims, prompts)
        cache[path] = {
            "label": d["label"], "images": ims,
            "jaq": np.asarray(JAQ(ctx).score(ims, [p.text for p in prompts]), np.float64),
            "acc": np.array([score(im, p.meta["scene"])["all"] for im, p in zip(ims, prompts)], np.float64),
            "fd": float(fd.compute().value),
        }
        return cache[path]

    ref = run(a.reference)

    def diff(x, y):
        d = y - x
        return f"{d.mean():+.4f} ±{d.std(ddof=1) / math.sqrt(d.size):.4f}"

    print(f"| A | B | ΔJAQ (B-A) | Δtoy-acc (B-A) | PSNR to {ref['label']} A -> B (dB; ref = 100) | ΔPSNR (B-A) | fd-toyclip A -> B |")
    print("|---|---|---|---|---|---|---|")
    for pair in a.pairs:
        pa, pb = pair.split(":")
        x, y = run(pa), run(pb)
        px = np.minimum(psnr_per_image(x["images"], ref["images"]), 100.0)
        py = np.minimum(psnr_per_image(y["images"], ref["images"]), 100.0)
        print(f"| {x['label']} | {y['label']} | {diff(x['jaq'], y['jaq'])} | {diff(x['acc'], y['acc'])} | "
              f"{px.mean():.1f} -> {py.mean():.1f} | {diff(px, py)} | {x['fd']:.2f} -> {y['fd']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
