"""The figures and the image grid of ``qbench report`` (:mod:`qbench.report`), from stored runs.

Plots come from :mod:`qbench.plots`, the grid from :mod:`qbench.grids`. Method artefacts are found
without knowing any method: every string in a run's ``method_report`` that names an existing
``.json`` file is read; a file with a 2-d ``calibration.trajectory`` (or ``trajectory``) gives a
search-trajectory plot, one with a per-layer ``sensitivity`` map gives a sensitivity plot.

The pieces :mod:`qbench.report` shares with the figures (:class:`Figure`, which metrics are
shown, which are measured against full precision) live here, so that the import goes one way:
``report`` -> ``report_figures``.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from qbench.comparison import short_label
from qbench.errors import QBenchError
from qbench.safetext import clean

#: axis names of 2-d coefficient vectors, by the artefact's ``parameterisation`` (used when the
#: artefact has no ``param_names`` of its own)
PARAM_NAMES = {"ramp": ("c_eps0", "c_x0")}


@dataclass
class Figure:
    name: str
    title: str
    caption: str
    png: bytes
    #: what the plotting code measured (:class:`qbench.plots.PlotPNG`): smallest font, label overlaps, cut texts
    meta: dict[str, Any] = field(default_factory=dict)


def top_metrics(rows: list[dict[str, Any]]) -> list[str]:
    """The runs' top-level metric names (``toy-acc``, not ``toy-acc/shape``), first seen first."""
    names: list[str] = []
    for r in rows:
        names += [n for n in r["metrics"] if n not in names and "/" not in n]
    return names


def is_reference_metric(rows: list[dict[str, Any]], name: str) -> bool:
    """A metric measured against the full-precision images (PSNR, SSIM, LPIPS, FID-FP)."""
    d = next((r["metrics"][name].get("details") or {} for r in rows if name in r["metrics"]), {})
    return str(d.get("reference", "")).startswith("full-precision")


def _clip(text: str, limit: int = 72) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fig(name: str, title: str, caption: str, png: bytes | None):
    return None if png is None else Figure(name, title, caption, png, dict(getattr(png, "meta", {})))


def _json_paths(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _json_paths(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _json_paths(v)
    elif isinstance(obj, str) and obj.endswith(".json") and os.path.isfile(obj):
        yield obj


def artefacts(rows: list[dict[str, Any]], by_id: dict[str, dict[str, Any]]) -> Iterator[tuple[dict[str, Any], str, dict[str, Any]]]:
    """``(row, path, data)`` for every readable JSON artefact named in the rows' method reports
    (each file once)."""
    seen = set()
    for r in rows:
        for path in _json_paths((by_id[r["run_id"]]["result"] or {}).get("method_report") or {}):
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            try:
                with open(path) as f:
                    data = json.load(f)
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                yield r, path, data


def _stem(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(path))[0])


def figures(rows: list[dict[str, Any]], by_id: dict[str, dict[str, Any]], stem: str) -> list:
    from qbench import plots

    names = top_metrics(rows)
    quality = [n for n in names if not is_reference_metric(rows, n)]
    fidelity = [n for n in names if is_reference_metric(rows, n)]

    def label(r):  # points: the tag, else the options that tell same-named rows apart (short; control characters dropped)
        extra = clean(f"tag {r['tag']}" if r.get("tag") else (r.get("options_diff") or ""))
        return clean(short_label(r).replace(" sim", "")) + (f" {extra[:24]}" if extra else "")

    def series(r):
        extra = clean(f"tag {r['tag']}" if r.get("tag") else (r.get("options_diff") or ""))
        return clean(f"{r['method']} {r.get('mode') or ''}".strip()) + (f" {extra[:24]}" if extra else "")

    out = [
        _fig("pareto-size", "Quality vs model size",
             "Each point is one configuration (mean ± standard error over prompts); x: deployable bytes of the denoiser. "
             "The dashed step line is the Pareto front: configurations no other one beats on both size and the metric.",
             plots.quality_vs(rows, quality, "size", label)),
        _fig("quality-latency", "Quality vs latency",
             "x: end-to-end latency at batch 1 (median). Hollow markers: simulate mode (fake quantization: float GEMMs plus "
             "quantize-dequantize; NOT a deployment latency), left out of the Pareto front.",
             plots.quality_vs(rows, quality, "latency", label)),
        _fig("fidelity-bits", "Fidelity to full precision per bit width",
             "Metrics measured against the full-precision image of the same prompt and seed, by bit spec (most bits left), "
             "one line per method and mode; error bars: standard error over prompts.",
             plots.fidelity_by_bits(rows, fidelity, series)),
    ]
    for r, path, data in artefacts(rows, by_id):
        cal = data.get("calibration") if isinstance(data.get("calibration"), dict) else {}
        traj = cal.get("trajectory") or data.get("trajectory")
        if isinstance(traj, list):
            names2 = tuple(data.get("param_names") or PARAM_NAMES.get(str(data.get("parameterisation")), ("parameter 1", "parameter 2")))
            grid = cal.get("grid") or {}
            box = (float(grid["lo"]), float(grid["hi"])) if "lo" in grid and "hi" in grid else None
            users = ", ".join(short_label(x) for x in rows if path in set(_json_paths((by_id[x["run_id"]]["result"] or {}).get("method_report") or {})))
            title = f"{os.path.basename(path)}: calibration search ({cal.get('search', '?')}, {cal.get('images', '?')} images, {cal.get('prompts', '?')})"
            if cal.get("chosen") is not None and isinstance(cal.get("jaq_before"), float) and isinstance(cal.get("jaq_after"), float):
                title += f"\nchosen: {cal['chosen']} {tuple(round(v, 4) for v in data.get('params', ()))}, score {cal['jaq_before']:.5f} -> {cal['jaq_after']:.5f}"
            out.append(_fig(f"search-{_stem(path)}", f"Calibration search over ({', '.join(names2)}): {os.path.basename(path)}",
                            f"Every point the search evaluated (`{path}`, used by {users}), coloured by its mean score on the full "
                            "calibration set; grey: scored on fewer prompts in an early stage; red: each new best. Dotted: the search box.",
                            plots.search_trajectory(traj, names2[:2], box, title)))
        sens = data.get("sensitivity")
        if isinstance(sens, dict) and sens and all(isinstance(v, dict) for v in sens.values()):
            out.append(_fig(f"sensitivity-{_stem(path)}", f"Per-layer sensitivity of {short_label(r)}",
                            f"Per-layer scores with one layer quantized at a time, at each bit width (`{path}`); one panel per kind "
                            "(weights, activations) and layer group, each group on its own axis (its own score and unit).",
                            plots.layer_sensitivity(sens, short_label(r), data.get("sensitivity_scores"))))
    return [f for f in out if f is not None]


def grid_prompts(rows: list[dict[str, Any]], by_id: dict[str, dict[str, Any]], n: int) -> list[tuple[Any, list[str]]]:
    """The grid's rows: ``(prompt, image file per configuration)`` for the first ``n`` prompts, in
    the prompt set's order, that every configuration of ``rows`` (one table) has an image file of.
    Raises QBenchError saying why there are none."""
    from qbench.results_export import image_paths, run_prompts

    prompts = run_prompts(by_id[rows[0]["run_id"]])
    paths = [image_paths(by_id[r["run_id"]], prompts) for r in rows]
    if not all(paths):
        raise QBenchError("a run kept no image folder")
    chosen = [(p, [ps.get(p.id, "") for ps in paths]) for p in prompts]
    chosen = [(p, files) for p, files in chosen if all(os.path.isfile(f) for f in files)][:n]
    if not chosen:
        raise QBenchError("no prompt has an image file in every configuration (image cache cleaned?)")
    return chosen


def grid(rows: list[dict[str, Any]], by_id: dict[str, dict[str, Any]], stem: str, n: int, cell: int, diff: bool):
    """``(Figure or None, why not)``: the image grid of ``rows`` (one table's configurations)."""
    import io

    from PIL import Image

    from qbench.grids import DIFF_SCALE, image_grid

    try:
        chosen = grid_prompts(rows, by_id, n)
    except QBenchError as e:
        return None, str(e)
    seed = by_id[rows[0]["run_id"]]["result"]["sampling"].get("seed")
    ref = next((i for i, r in enumerate(rows) if r.get("is_baseline")), None) if diff else None
    headers = [[clean(x) for x in [short_label(r)] + [x for x in (_clip(r.get("options_diff") or "", 60), f"tag {r['tag']}" if r.get("tag") else None) if x]
                + [f"run {r['run_id'][-6:]}"]] for r in rows]
    lines = []
    for p, files in chosen:
        ims = []
        for f in files:
            with Image.open(f) as im:
                ims.append(im.convert("RGB"))
        lines.append((clean(f"#{p.index} {p.id}, seed {seed + p.index if isinstance(seed, int) else '?'}: {p.text}"), ims))
    buf = io.BytesIO()
    image_grid(headers, lines, cell=cell, reference=ref).quantize(colors=256).save(buf, format="PNG", optimize=True)  # 256 colours: a third of the bytes
    caption = (f"The same prompt and seed in every column: the first {len(chosen)} prompts of the set (in its order) that every configuration "
               "of the first table generated; text under each row."
               + (f" Under each image row: |difference| to {short_label(rows[ref])}, mean over RGB, magma colour map from 0 (black) to "
                  f"{DIFF_SCALE} (white, clipped)." if ref is not None else ""))
    return _fig("grid", "Images", caption, buf.getvalue()), None
