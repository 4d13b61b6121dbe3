"""The full-precision sections of reports/toy-world.md, from the JSON of `qbench zoo eval` that
reports/scripts/toy_world.sh writes (reports/scripts/toy_reports.py adds the quantization
sections, from `qbench run`s, and writes the file).

    python reports/scripts/toy_world_md.py RESULTS_DIR      # prints the full-precision sections
"""
from __future__ import annotations

import json
import os
import sys


def load(d: str, name: str):
    p = os.path.join(d, name)
    return json.load(open(p)) if os.path.exists(p) else None


def fp_sections(d: str) -> list[str]:
    """Markdown lines: what the FP toy models draw (single objects, pairs), CLIP-IQA's ranking."""
    models = ("toy-lcm", "toy-flux")
    ev = {m: load(d, f"eval_{m}.json") for m in models}
    pair = {m: load(d, f"eval_pair_{m}.json") for m in models}
    rank = load(d, "clipiqa_ranking.json")
    out = []
    e0 = next(e for e in ev.values() if e)
    out += [
        f"## Full precision, held-out single-object scenes (`{e0['prompts']}`: 74 unseen scenes x 4 wordings)",
        "",
        "| | " + " | ".join(m for m in models if ev[m]) + " | chance |",
        "|---|" + "---|" * (sum(1 for m in models if ev[m]) + 1),
    ]
    chance = {"toy-acc": "0.009", "toy-acc/background": "0.333", "toy-acc/colour": "0.167", "toy-acc/size": "0.5",
              "toy-acc/shape": "0.333", "toy-acc/position": "0.333"}
    for k, c in chance.items():
        label = "toy-acc all-correct" if k == "toy-acc" else k.replace("toy-acc/", "  ")
        out.append(f"| {label} | " + " | ".join(f"{ev[m]['toy_acc'][k]:.3f}" for m in models if ev[m]) + f" | {c} |")
    rows = [("toy-CLIP score: matching captions", "clip_matching", "{:.1f}"), ("toy-CLIP score: shuffled captions", "clip_shuffled", "{:.1f}"),
            ("toy-CLIP score: rendered ground truth", "clip_ground_truth", "{:.1f}"), ("fd-toyclip (trained)", "fd_toyclip", "{:.2f}"),
            ("fd-toyclip (same pipeline, random denoiser)", "fd_toyclip_untrained", "{:.1f}"),
            ("CLIP-IQA generated", "clipiqa_generated", "{:.3f}"), ("CLIP-IQA ground truth", "clipiqa_ground_truth", "{:.3f}")]
    for label, key, fmt in rows:
        out.append(f"| {label} | " + " | ".join(fmt.format(ev[m][key]) for m in models if ev[m]) + " | |")
    p0 = next((p for p in pair.values() if p), None)
    if p0:
        out += ["", f"## Full precision, held-out two-object scenes (`{p0['prompts']}`)", "",
                "| | " + " | ".join(m for m in models if pair[m]) + " | chance |", "|---|" + "---|" * (sum(1 for m in models if pair[m]) + 1)]
        pchance = {"toy-acc": "0.0007", "toy-acc/background": "0.333", "toy-acc/left_colour": "0.167", "toy-acc/left_shape": "0.333",
                   "toy-acc/right_colour": "0.167", "toy-acc/right_shape": "0.333"}
        for k, c in pchance.items():
            label = "toy-acc all-correct" if k == "toy-acc" else k.replace("toy-acc/", "  ")
            out.append(f"| {label} | " + " | ".join(f"{pair[m]['toy_acc'][k]:.3f}" for m in models if pair[m]) + f" | {c} |")
        for label, key, fmt in rows[:5]:
            out.append(f"| {label} | " + " | ".join(fmt.format(pair[m][key]) for m in models if pair[m]) + " | |")
    if rank:
        r = rank.get("clipiqa_clean_beats_degraded", {})
        out += ["", "## CLIP-IQA (toy CLIP, \"Good photo.\" / \"Bad photo.\") ranks clean above degraded", "",
                "Fraction of (clean, degraded) pairs of the same rendered scene where the clean image scores higher "
                f"({rank['n_prompts']} scenes x {len(r) - 1} degradations): "
                + ", ".join(f"{k} {v:.3f}" for k, v in r.items()) + "."]
    return out


def main() -> None:
    print("\n".join(fp_sections(sys.argv[1])))


if __name__ == "__main__":
    main()
