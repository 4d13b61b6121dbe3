"""qbench's in-tree CLIP-IQA against pyiqa's on the same images and the same weights.

    .venv/bin/python tools/clipiqa_vs_pyiqa.py [--arch rn50|tiny] [--json out.json]

Both implementations read one random ResNet CLIP state dict (``standins.clipiqa_backbone``:
RN50's shapes by default, seeded, float16-exact weights, logit scale ln 100, so exactly the
numbers OpenAI's checkpoint format would hand both), and score the same images: scikit-image's
bundled photographs (astronaut 512x512, coffee 400x600, chelsea 300x451, rocket 427x640) and
two smooth random images (224x224, 96x160), each at its native resolution, with both prompt sets.
Printed: the per-image scores of each and the largest absolute difference. The weights are
random: the scores themselves mean nothing; only their agreement does. Needs pyiqa
(``pip install 'qbench[pyiqa]'``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def images() -> dict[str, np.ndarray]:
    """name -> HxWx3 uint8 image."""
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(0)
    out = {name: getattr(data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")}
    for h, w in ((224, 224), (96, 160)):
        small = (rng.random((h // 16, w // 16, 3)) * 255).astype(np.uint8)
        out[f"smooth-random-{h}x{w}"] = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="rn50", choices=("rn50", "tiny"))
    ap.add_argument("--json", help="write the scores and differences here")
    args = ap.parse_args(argv)

    from qbench.api import MetricContext
    from qbench.metrics import standins
    from qbench.metrics.clipiqa import CLIPIQAScorer

    backbone = standins.clipiqa_backbone(arch=args.arch)
    ims = images()
    report = {"backbone": backbone, "arch": args.arch, "meaningful": False,
              "images": {k: list(v.shape) for k, v in ims.items()}, "prompt_sets": {}}
    for prompts in ("photo", "pyiqa"):
        row = {}
        for impl in ("qbench", "pyiqa"):
            t = time.perf_counter()
            scorer = CLIPIQAScorer(MetricContext(options={"clipiqa_backbone": backbone, "clipiqa_impl": impl, "clipiqa_prompts": prompts}))
            row[impl] = scorer.score(list(ims.values()))
            row[f"{impl}_s"] = time.perf_counter() - t
        diff = np.abs(row["qbench"] - row["pyiqa"])
        report["prompt_sets"][prompts] = {
            "qbench": row["qbench"].tolist(), "pyiqa": row["pyiqa"].tolist(), "max_abs_diff": float(diff.max()),
            "seconds": {"qbench": row["qbench_s"], "pyiqa": row["pyiqa_s"]},
        }
        print(f"prompts={prompts} ({args.arch} random weights; scores meaningless, agreement is the point)")
        for name, a, b in zip(ims, row["qbench"], row["pyiqa"]):
            print(f"  {name:<24} {'x'.join(map(str, ims[name].shape[:2])):>8}  qbench {a:.8f}  pyiqa {b:.8f}  |diff| {abs(a - b):.2e}")
        print(f"  max |qbench - pyiqa| = {diff.max():.3e}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
