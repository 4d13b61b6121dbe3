"""``qbench report``: a Markdown report per model with the comparison table and image grids.

For each model with finished runs: ``<out_dir>/report-<model>.md`` holding the comparison tables
(the same rows and groups of comparable settings as ``qbench compare``, :mod:`qbench.compare`),
how each number was made, and ``report-<model>-grid.png``: one row per prompt (the first 4 prompts
every run of the first group shares), one column per configuration.
"""
from __future__ import annotations

import os
import re
from typing import Any

from qbench.errors import QBenchError
from qbench.store import Store
from qbench.compare import compare, short_label
from qbench.compare_table import settings_line
from qbench.tables import fmt_paired, fmt_value, meaningless

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
        draw.text((c * CELL + 4, 6), (short_label(r) + (f" {r['tag']}" if r.get("tag") else ""))[:26], fill="black")
        for i, pid in enumerate(shared):
            with Image.open(files[c][pid]) as im:
                grid.paste(im.convert("RGB").resize((CELL, CELL), Image.NEAREST), (c * CELL, head + i * CELL))
    grid.save(path)
    return True


def _md(x: Any) -> str:
    return str(x).replace("|", "\\|")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    names: list[str] = []
    for r in rows:
        names += [n for n in r["metrics"] if n not in names]
    arrows = {n: ("↑" if next(r["metrics"][n] for r in rows if n in r["metrics"]).get("higher_is_better", True) else "↓") for n in names}
    head = ["configuration", "options", "tag"] + [f"{n} {arrows[n]}" for n in names] + ["latency s", "step s", "peak MiB", "size MiB", "× 16-bit", "run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [short_label(r) + (" (baseline)" if r.get("is_baseline") else ""), r.get("options_diff") or "-", r.get("tag") or "-"]
        cells += [fmt_value(r["metrics"].get(n)) for n in names]
        cells += [
            f"{r['latency_s']:.3f}" if r["latency_s"] is not None else "-",
            f"{r['step_s']:.4f}" if r["step_s"] is not None else "-",
            f"{r['peak_bytes'] / 2**20:.1f}" if r["peak_bytes"] else "-",
            (f"{r['size_bytes'] / 2**20:.2f}" + (" (simulated)" if r["size_simulated"] else "")) if r["size_bytes"] else "-",
            f"{r['size_vs_16bit']:.3f}" if r["size_vs_16bit"] else "-",
            r["run_id"],
        ]
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    return "\n".join(lines)


def paired_markdown(rows: list[dict[str, Any]]) -> str:
    """Paired differences to the group's baseline (rows that have them), or '' when there are none."""
    prs = [r for r in rows if r.get("paired")]
    if not prs:
        return ""
    names: list[str] = []
    for r in prs:
        names += [n for n in r["paired"] if n not in names]
    head = ["configuration", "run"] + [f"Δ {n}" for n in names]
    lines = ["Paired differences to the baseline (same prompts and seeds; mean ± standard error over prompts; "
             "~ = within two standard errors of zero):", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in prs:
        cells = [short_label(r), r["run_id"][-6:]] + [fmt_paired(r["paired"].get(n), 4) for n in names]
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    return "\n".join(lines)


def write_report(db: str, out_dir: str, model: str | None = None) -> list[str]:
    store = Store(db, create=False)
    models = [model] if model else store.models()
    if not models:
        raise QBenchError(f"no finished runs in {db}; run `qbench run` first")
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for m in models:
        runs = store.runs(model=m)
        if not runs:
            raise QBenchError(f"no finished runs for model {m!r} in {db}")
        rows, _ = compare(runs, store.per_image)
        by_id = {r["id"]: r for r in runs}
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", m)
        grid_name = f"report-{safe}-grid.png"
        has_grid = write_grid([r for r in rows if r["group"] == 0], by_id, os.path.join(out_dir, grid_name))
        lines = [f"# qbench report — {m}", ""]
        n_groups = rows[-1]["group"] + 1
        for g in range(n_groups):
            grows = [r for r in rows if r["group"] == g]
            lines += [f"## {'Table ' + str(g + 1) + ': ' if n_groups > 1 else ''}{settings_line(grows[0])}", ""]
            if grows[0].get("group_note"):
                lines += [f"*{grows[0]['group_note']}*", ""]
            lines += [markdown_table(grows), ""]
            paired = paired_markdown(grows)
            if paired:
                lines += [paired, ""]
            lines += [f"- `{short_label(r)}` {r['run_id'][-6:]}: {r['paired_note']}" for r in grows if r.get("paired_note")]
        prov = by_id[rows[0]["run_id"]]["result"].get("provenance", {})
        lines.append(f"- weights: {'; '.join(sorted({r['weights'] for r in rows if r['weights']}))}")
        lines.append(f"- device: {prov.get('device_name')}; dtype {prov.get('dtype')}; torch {prov.get('versions', {}).get('torch')}, diffusers {prov.get('versions', {}).get('diffusers')}; git {prov.get('git')}")
        lines.append(f"- memory: {rows[0]['memory_kind']}; latency: batch 1, median of timed runs after warm-up")
        lines.append("- size: deployable bytes of the denoiser (simulated: what the packed kernel format would take); × 16-bit: ratio to the same model at 16 bits")
        for kind in sorted({str(r["latency_kind"]) for r in rows if r.get("latency_kind")}):
            lines.append(f"- latency of {', '.join(short_label(r) for r in rows if str(r.get('latency_kind')) == kind)}: {kind}")
        for r in rows:
            lines.append(f"- `{short_label(r)}` {r['run_id'][-6:]}: mode `{r['mode']}`, method config `{r['method_config']}`")
        if any(meaningless(v) for r in rows for v in r["metrics"].values()):
            lines.append("- † computed by a network with random or stand-in weights: checks mechanics, says nothing about quality")
        for note in sorted({n for r in rows for n in r["notes"]}):
            lines.append(f"- note: {note}")
        if has_grid:
            lines += ["", f"![images: one row per prompt, one column per configuration of the first table]({grid_name})"]
        path = os.path.join(out_dir, f"report-{safe}.md")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        written.append(path)
    return written
