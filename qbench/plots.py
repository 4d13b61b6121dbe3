"""The report's figures (matplotlib, object API with the Agg canvas: no pyplot, no global state).

Every function takes plain data (rows of :func:`qbench.comparison.compare`, or a method's calibration
artefact) and returns PNG bytes, or None when there is nothing to draw:

* :func:`quality_vs` — one panel per metric: the metric (mean ± standard error) against the
  denoiser's deployable size or the end-to-end latency, one point per configuration, and the
  **Pareto front** (configurations no other one beats on both axes) as a step line.
* :func:`fidelity_by_bits` — metrics measured against the full-precision images (PSNR, SSIM,
  LPIPS, ...) per bit width, one line per method.
* :func:`search_trajectory` — a calibration search over a 2-d coefficient plane: every evaluated
  point coloured by its score (on the full calibration set; points scored on fewer prompts grey),
  the best-so-far path and the search box.
* :func:`layer_sensitivity` — per-layer sensitivity scores at each bit width (lower = more
  sensitive for SQNR/SSIM-type scores), layers in model order.
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

DPI = 100
MARKERS = "osD^v<>ph*"
#: the smallest text on a figure, points; with figures at most MAX_W inches wide, a page of 800 px
#: shows it at >= 9 pt x 100 dpi / 72 x (768 / 840) ~ 11 px (the report checks >= 8 px)
FONT = 9
MAX_W = 8.4


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


class PlotPNG(bytes):
    """PNG bytes with what the plotting code measured on the figure (``meta``): ``min_text_pt``
    (the smallest font, points), ``width_px``, ``labels`` (point labels placed), ``label_overlaps``
    (1 when two label boxes overlap), ``text_outside`` (texts cut by the figure's edge), and per
    panel ``xticklabels`` and ``ylabels``."""

    meta: dict[str, Any]


def measure(fig) -> dict[str, Any]:
    """What :class:`PlotPNG` records, measured on the drawn figure (renderer text extents)."""
    from matplotlib.text import Text

    from qbench.plot_labels import any_overlap, label_boxes

    renderer = fig.canvas.get_renderer()
    fb = fig.bbox
    texts = list(fig.texts) + ([fig._suptitle] if fig._suptitle is not None else [])
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        if ax.get_legend() is not None:
            texts += list(ax.get_legend().get_texts())
    for lg in fig.legends:
        texts += list(lg.get_texts())
    texts = [t for t in texts if isinstance(t, Text) and t.get_visible() and t.get_text().strip()]
    outside = []
    for t in texts:
        b = t.get_window_extent(renderer)
        if b.x0 < fb.x0 - 1 or b.x1 > fb.x1 + 1 or b.y0 < fb.y0 - 1 or b.y1 > fb.y1 + 1:
            outside.append(t.get_text()[:40])
    placed = getattr(fig, "placed_labels", [])
    boxes = label_boxes(placed)
    shown = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    return {"min_text_pt": min((t.get_fontsize() for t in texts), default=None), "width_px": round(fb.width),
            "labels": len(placed), "label_overlaps": int(any_overlap(boxes)), "text_outside": outside,
            "xticklabels": [[t.get_text() for t in ax.get_xticklabels()] for ax in shown], "ylabels": [ax.get_ylabel() for ax in shown]}


def _png(fig) -> bytes:
    """The figure as a 256-colour PNG (plots have few colours; a third of the RGB file's bytes),
    a :class:`PlotPNG` carrying :func:`measure`'s numbers."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    meta = measure(fig)
    buf.seek(0)
    out = io.BytesIO()
    with Image.open(buf) as im:
        im.convert("RGB").quantize(colors=256).save(out, format="PNG", optimize=True)
    png = PlotPNG(out.getvalue())
    png.meta = meta
    return png


def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the non-dominated points, by increasing x (x is a cost: lower is better; y is
    better when higher if ``higher_is_better``). A point is dominated when another one has x <= and
    y at least as good, one of them strictly. Pure function."""
    sign = 1.0 if higher_is_better else -1.0
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -sign * points[i][1]))
    front, best = [], -math.inf
    for i in order:
        y = sign * points[i][1]
        if y > best:
            front.append(i)
            best = y
    return front


def _style(rows: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Colour per method, marker per bit spec (stable across the figures of one report)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    bits = list(dict.fromkeys(r.get("bits") or "-" for r in rows))
    return {r["run_id"]: (cmap(methods.index(r["method"]) % 10), MARKERS[bits.index(r.get("bits") or "-") % len(MARKERS)]) for r in rows}


def quality_vs(rows: list[dict[str, Any]], metrics: list[str], x: str, label) -> bytes | None:
    """``x``: ``"size"`` (deployable MiB of the denoiser) or ``"latency"`` (end-to-end seconds,
    batch 1; configurations whose latency is not a deployment latency (simulate mode) are drawn
    hollow and left out of the front). ``label(row) -> str`` names the points."""
    key = {"size": "size_bytes", "latency": "latency_s"}[x]
    scale = 2**20 if x == "size" else 1.0
    metrics = [m for m in metrics if sum(1 for r in rows if r["metrics"].get(m, {}).get("value") is not None and r.get(key)) >= 2]
    if not metrics:
        return None
    from qbench.plot_labels import label_points

    style = _style(rows)
    cols = min(2, len(metrics))
    nrow = math.ceil(len(metrics) / cols)
    fig = _figure(MAX_W / 2 * cols, 3.6 * nrow)
    axes = fig.subplots(nrow, cols, squeeze=False).ravel()
    panels = []
    for ax, m in zip(axes, metrics):
        lab_pts, lab_txt = [], []
        pts, idx = [], []
        hib = True
        for r in rows:
            v = r["metrics"].get(m)
            if not v or v.get("value") is None or not r.get(key):
                continue
            hib = v.get("higher_is_better", True)
            xv, yv = r[key] / scale, v["value"]
            hollow = x == "latency" and str(r.get("latency_kind") or "").startswith("simulate")
            c, mk = style[r["run_id"]]
            ax.errorbar(xv, yv, yerr=v.get("stderr") or None, fmt=mk, ms=7, color=c, mfc="none" if hollow else c, capsize=2, lw=0.8)
            lab_pts.append((xv, yv))
            lab_txt.append(label(r))
            if not hollow:
                pts.append((xv, yv))
                idx.append(r)
        front = pareto_front(pts, hib)
        if len(front) >= 2:
            fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
            ax.step(fx, fy, where="post", color="0.4", lw=1, ls="--", label="Pareto front")
            ax.legend(fontsize=FONT, loc="best")
        ax.set_title(f"{m} {'↑' if hib else '↓'}", fontsize=FONT + 1)
        ax.margins(x=0.25, y=0.25)  # room around the points for their labels
        xlabel = "denoiser size, MiB (deployable)" if x == "size" else "latency, s (batch 1, end to end)"
        ax.set_xlabel(xlabel, fontsize=FONT)
        ax.tick_params(labelsize=FONT)
        ax.grid(alpha=0.3)
        panels.append((ax, lab_pts, lab_txt, xlabel))
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    fig.placed_labels = label_points(fig, panels, FONT)  # kept on the figure for tests
    return _png(fig)


def _wa(bits: str | None) -> tuple[float, float]:
    try:
        w, a = bits.upper().lstrip("W").split("A")
        return float(w), float(a)
    except (AttributeError, ValueError):
        return 99.0, 99.0


def fidelity_by_bits(rows: list[dict[str, Any]], metrics: list[str], series) -> bytes | None:
    """Reference metrics per bit width: x = bit specs from most to fewest bits (the rows' mean
    effective bits where a mixed map has them), one line per ``series(row)`` (method and mode)."""
    qrows = [r for r in rows if r.get("bits")]
    metrics = [m for m in metrics if sum(1 for r in qrows if r["metrics"].get(m, {}).get("value") is not None) >= 1]
    if not qrows or not metrics:
        return None
    labels = sorted({r["bits"] for r in qrows}, key=lambda b: tuple(-v for v in _wa(b)))  # nominal specs: a mixed map sits at its budget
    cols = min(2, len(metrics))
    fig = _figure(MAX_W / 2 * cols, 3.6 * math.ceil(len(metrics) / cols))
    axes = fig.subplots(math.ceil(len(metrics) / cols), cols, squeeze=False).ravel()
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in qrows:  # a mixed map's mean effective bits (W4.01A8.01) go into its line's name, not onto the axis
        eff = r.get("effective_bits")
        groups.setdefault(series(r) + (f" (mean {eff})" if eff and eff != r["bits"] else ""), []).append(r)
    for ax, m in zip(axes, metrics):
        hib = True
        for gi, (name, members) in enumerate(groups.items()):
            pts = sorted(((labels.index(r["bits"]), r["metrics"][m]) for r in members if r["metrics"].get(m, {}).get("value") is not None),
                         key=lambda t: t[0])
            if not pts:
                continue
            hib = pts[0][1].get("higher_is_better", True)
            ax.errorbar([p[0] for p in pts], [p[1]["value"] for p in pts], yerr=[p[1].get("stderr") or 0 for p in pts], marker=MARKERS[gi % len(MARKERS)],
                        capsize=2, lw=1, label=name)
        ax.set_xticks(range(len(labels)), labels, fontsize=FONT)
        ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set_title(f"{m} {'↑' if hib else '↓'} (vs full precision)", fontsize=FONT + 1)
        ax.set_xlabel("bit spec (weights, activations)", fontsize=FONT)
        ax.set_ylabel(f"{m}{f', {unit}' if (unit := _unit(rows, m)) else ''}", fontsize=FONT)
        ax.tick_params(labelsize=FONT)
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    # one legend for all panels, under them: inside a panel it hides points
    handles, names = {}, {}
    for ax in axes[: len(metrics)]:
        for h, n in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(n, h)
    names = list(handles)
    fig.legend([handles[n] for n in names], names, loc="outside lower center", ncol=min(2, len(names)), fontsize=FONT)
    return _png(fig)


#: units of reference metrics by name, where a metric's details do not give one
UNITS = {"psnr": "dB", "sqnr": "dB", "ssim": "unitless, 0-1", "lpips": "distance, 0-1", "ms-ssim": "unitless, 0-1"}


def _unit(rows: list[dict[str, Any]], name: str) -> str:
    """A metric's unit: its details' ``unit``, else :data:`UNITS` by base name, else ''."""
    d = next(((r["metrics"][name].get("details") or {}) for r in rows if name in r["metrics"]), {})
    return str(d.get("unit") or UNITS.get(name.split("/")[0].split("-fp")[0].lower(), ""))


def search_trajectory(trajectory: list[dict[str, Any]], names: tuple[str, str], box: tuple[float, float] | None = None,
                      title: str = "") -> bytes | None:
    """A 2-d search: ``trajectory`` entries ``{"point": [a, b], "n_prompts", "score", "images"}``
    (:class:`qbench.calibration.SearchResult`). Points scored on the most prompts are coloured by
    score; the others (early, cheaper stages) are grey; the line follows each new best."""
    pts = [t for t in trajectory if len(t.get("point") or ()) == 2 and t.get("score") is not None]
    if len(pts) < 2:
        return None
    full = max(t["n_prompts"] for t in pts)
    fig = _figure(6.0, 4.8)
    ax = fig.subplots()
    if box:
        from matplotlib.patches import Rectangle

        ax.add_patch(Rectangle((box[0], box[0]), box[1] - box[0], box[1] - box[0], fill=False, ls=":", color="0.3", label="search box"))
    early = [t for t in pts if t["n_prompts"] < full]
    if early:
        ax.scatter([t["point"][0] for t in early], [t["point"][1] for t in early], s=10, c="0.75", label="fewer prompts (early stages)")
    last = [t for t in pts if t["n_prompts"] == full]
    sc = ax.scatter([t["point"][0] for t in last], [t["point"][1] for t in last], s=22, c=[t["score"] for t in last], cmap="viridis",
                    label=f"scored on all {full} prompts")
    fig.colorbar(sc, ax=ax, label="mean score")
    best, path = -math.inf, []
    for t in last:
        if t["score"] > best:
            best = t["score"]
            path.append(t)
    if path:
        ax.plot([t["point"][0] for t in path], [t["point"][1] for t in path], "-", color="crimson", lw=1, label="best so far")
        ax.plot(*path[-1]["point"], marker="*", ms=14, color="crimson", ls="none", label=f"best {best:.6f} after {path[-1].get('images', '?')} images")
    ax.plot(1.0, 1.0, marker="+", ms=12, color="k", ls="none", label="identity (1, 1)")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    import textwrap

    # each line of the title wrapped to the axes' width (a long file name no longer runs off both sides)
    ax.set_title("\n".join(textwrap.fill(line, 62) for line in title.splitlines()), fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    ax.legend(fontsize=FONT, loc="best")
    ax.grid(alpha=0.3)
    return _png(fig)


def layer_sensitivity(sens: dict[str, dict[str, Any]], title: str = "", scores: dict[str, Any] | None = None) -> bytes | None:
    """``sens``: layer -> {"w": {bits: score}, "a": {bits: score}, "group": ...}. One panel per
    kind (w, a) and layer group: groups are scored by different measures (e.g. SSIM 0-1 on one,
    SQNR in dB on another), so each gets its own y axis, named by ``scores[group]`` (``{"name",
    "unit"}``, from the artefact) or by the group's name. One line per bit width, layers on x in
    model order."""
    import textwrap

    layers = list(sens)
    kinds = [k for k in ("w", "a") if any(isinstance(sens[n].get(k), dict) and sens[n][k] for n in layers)]
    if not layers or not kinds:
        return None
    groups = list(dict.fromkeys(str(sens[n].get("group") or "all") for n in layers))
    panels = [(k, g) for k in kinds for g in groups if any(str(sens[n].get("group") or "all") == g and sens[n].get(k) for n in layers)]
    cols = min(2, len(groups))
    fig = _figure(MAX_W, 3.0 * math.ceil(len(panels) / cols))
    axes = fig.subplots(math.ceil(len(panels) / cols), cols, squeeze=False).ravel()
    for ax, (k, g) in zip(axes, panels):
        members = [n for n in layers if str(sens[n].get("group") or "all") == g]
        widths = sorted({str(b) for n in members for b in (sens[n].get(k) or {})}, key=lambda s: float(s))
        for b in widths:
            ys = [float((sens[n].get(k) or {}).get(b, (sens[n].get(k) or {}).get(int(b) if b.isdigit() else b, math.nan))) for n in members]
            ax.plot(range(len(members)), ys, marker=".", lw=0.8, label=f"{k.upper()}{b}")
        sc = (scores or {}).get(g) or {}
        name = sc.get("name") or "score"
        ax.set_ylabel(textwrap.fill(f"{name}{', ' + sc['unit'] if sc.get('unit') else ''}", 28), fontsize=FONT)
        ax.set_title(f"{'weights' if k == 'w' else 'activations'}: {g} layers ({len(members)})", fontsize=FONT + 1)
        ax.set_xlabel(f"{g} layer (model order)", fontsize=FONT)
        ax.tick_params(labelsize=FONT)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=FONT, ncol=min(4, len(widths)))
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=FONT + 1)
    return _png(fig)
