"""``qbench report``: a Markdown report per model with the comparison table and image grids.

For each model with finished runs: ``<out_dir>/report-<model>.md`` holding the comparison table
(the same rows as ``qbench compare``), how each number was made, and ``report-<model>-grid.png``:
one row per prompt (the first 4 prompts every run shares), one column per method setting.
"""
from __future__ import annotations

import os
import re
from typing import Any

from qbench.errors import QBenchError
from qbench.store import Store
from qbench.tables import add_paired, compare_rows, fmt_paired, fmt_value, meaningless

GRID_PROMPTS = 4
CELL = 160


def _image_files(run: dict[str, Any]) -> dict[str, str]:
    d = run["result"].get("images_dir")
    if not d or not os.path.isdir(d):
        return {}
    return {f.rsplit("-s", 1)[0]: os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".png")}


def write_grid(rows: list[dict[str, Any]], runs_by_id: dict[str, dict[str, Any]], path: str) -> bool:
    from PIL import Image, ImageDraw

    files = [_image_files(runs_by_id[r["run_id"]]) for r in rows]
    shared = sorted(set.intersection(*[set(f) for f in files])) if files and all(files) else []
    shared = shared[:GRID_PROMPTS]
    if not shared:
        return False
    head = 24
    grid = Image.new("RGB", (CELL * len(rows), head + CELL * len(shared)), "white")
    draw = ImageDraw.Draw(grid)
    for c, r in enumerate(rows):
        draw.text((c * CELL + 4, 6), r["label"][:26], fill="black")
        for i, pid in enumerate(shared):
            with Image.open(files[c][pid]) as im:
                grid.paste(im.convert("RGB").resize((CELL, CELL), Image.NEAREST), (c * CELL, head + i * CELL))
    grid.save(path)
    return True


def markdown_table(rows: list[dict[str, Any]]) -> str:
    names: list[str] = []
    for r in rows:
        names += [n for n in r["metrics"] if n not in names]
    arrows = {n: ("↑" if next(r["metrics"][n] for r in rows if n in r["metrics"]).get("higher_is_better", True) else "↓") for n in names}
    head = ["method", "mode", "bits"] + [f"{n} {arrows[n]}" for n in names] + ["latency s", "step s", "peak MiB", "denoiser MiB", "× fp size", "run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], r["mode"] or "-", r["bits"] or "-"] + [fmt_value(r["metrics"].get(n)) for n in names]
        cells += [
            f"{r['latency_s']:.3f}" if r["latency_s"] is not None else "-",
            f"{r['step_s']:.4f}" if r["step_s"] is not None else "-",
            f"{r['peak_bytes'] / 2**20:.1f}" if r["peak_bytes"] else "-",
            f"{r['model_bytes'] / 2**20:.2f}" if r["model_bytes"] else "-",
            f"{r['size_vs_fp']:.3f}" if r["size_vs_fp"] else "-",
            r["run_id"],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def paired_markdown(rows: list[dict[str, Any]]) -> str:
    """Paired differences to fp (rows that ``add_paired`` gave one), or '' when there are none."""
    prs = [r for r in rows if r.get("paired")]
    if not prs:
        return ""
    names: list[str] = []
    for r in prs:
        names += [n for n in r["paired"] if n not in names]
    head = ["method", "mode", "bits"] + [f"Δ {n}" for n in names]
    lines = ["Paired differences to fp (same prompts and seeds; mean ± standard error over prompts; "
             "~ = within two standard errors of zero):", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in prs:
        cells = [r["method"], r["mode"] or "-", r["bits"] or "-"] + [fmt_paired(r["paired"].get(n), 4) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(db: str, out_dir: str, model: str | None = None) -> list[str]:
    store = Store(db)
    models = [model] if model else store.models()
    if not models:
        raise QBenchError(f"no finished runs in {db}; run `qbench run` first")
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for m in models:
        runs = store.runs(model=m)
        if not runs:
            raise QBenchError(f"no finished runs for model {m!r} in {db}")
        rows = compare_rows(runs)
        add_paired(rows, store.per_image)
        by_id = {r["id"]: r for r in runs}
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", m)
        grid_name = f"report-{safe}-grid.png"
        has_grid = write_grid(rows, by_id, os.path.join(out_dir, grid_name))
        lines = [f"# qbench report — {m}", ""]
        lines += [markdown_table(rows), ""]
        paired = paired_markdown(rows)
        if paired:
            lines += [paired, ""]
        prov = by_id[rows[0]["run_id"]]["result"].get("provenance", {})
        lines.append(f"- weights: {'; '.join(sorted({r['weights'] for r in rows if r['weights']}))}")
        lines.append(f"- device: {prov.get('device_name')}; dtype {prov.get('dtype')}; torch {prov.get('versions', {}).get('torch')}, diffusers {prov.get('versions', {}).get('diffusers')}; git {prov.get('git')}")
        lines.append(f"- memory: {rows[0]['memory_kind']}; latency: batch 1, median of timed runs after warm-up")
        for r in rows:
            lines.append(f"- `{r['label']}`: mode `{r['mode']}`, method config `{r['method_config']}`")
        if any(meaningless(v) for r in rows for v in r["metrics"].values()):
            lines.append("- † computed by a network with random or stand-in weights: checks mechanics, says nothing about quality")
        for note in sorted({n for r in rows for n in r["notes"]}):
            lines.append(f"- note: {note}")
        if has_grid:
            lines += ["", f"![images: one row per prompt, one column per method setting]({grid_name})"]
        path = os.path.join(out_dir, f"report-{safe}.md")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        written.append(path)
    return written
