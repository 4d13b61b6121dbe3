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


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    """The figure as a 256-colour PNG (plots have few colours; a third of the RGB file's bytes)."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    buf.seek(0)
    out = io.BytesIO()
    with Image.open(buf) as im:
        im.convert("RGB").quantize(colors=256).save(out, format="PNG", optimize=True)
    return out.getvalue()


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
    style = _style(rows)
    cols = min(3, len(metrics))
    nrow = math.ceil(len(metrics) / cols)
    fig = _figure(4.2 * cols, 3.3 * nrow)
    axes = fig.subplots(nrow, cols, squeeze=False).ravel()
    for ax, m in zip(axes, metrics):
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
            ax.annotate(label(r), (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=7)
            if not hollow:
                pts.append((xv, yv))
                idx.append(r)
        front = pareto_front(pts, hib)
        if len(front) >= 2:
            fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
            ax.step(fx, fy, where="post", color="0.4", lw=1, ls="--", label="Pareto front")
            ax.legend(fontsize=7, loc="best")
        ax.set_title(f"{m} {'↑' if hib else '↓'}", fontsize=10)
        ax.margins(x=0.12, y=0.08)
        ax.set_xlabel("denoiser size, MiB (deployable)" if x == "size" else "latency, s (batch 1, end to end)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
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
    labels = sorted({r.get("effective_bits") or r["bits"] for r in qrows}, key=lambda b: tuple(-v for v in _wa(b)))
    fig = _figure(4.2 * len(metrics), 3.3)
    axes = fig.subplots(1, len(metrics), squeeze=False).ravel()
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in qrows:
        groups.setdefault(series(r), []).append(r)
    for ax, m in zip(axes, metrics):
        hib = True
        for gi, (name, members) in enumerate(groups.items()):
            pts = sorted(((labels.index(r.get("effective_bits") or r["bits"]), r["metrics"][m]) for r in members if r["metrics"].get(m, {}).get("value") is not None),
                         key=lambda t: t[0])
            if not pts:
                continue
            hib = pts[0][1].get("higher_is_better", True)
            ax.errorbar([p[0] for p in pts], [p[1]["value"] for p in pts], yerr=[p[1].get("stderr") or 0 for p in pts], marker=MARKERS[gi % len(MARKERS)],
                        capsize=2, lw=1, label=name)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_title(f"{m} {'↑' if hib else '↓'} (vs full precision)", fontsize=10)
        ax.set_xlabel("bits (weights, activations)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


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
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return _png(fig)


def layer_sensitivity(sens: dict[str, dict[str, Any]], title: str = "") -> bytes | None:
    """``sens``: layer -> {"w": {bits: score}, "a": {bits: score}, "group": ...}; one panel per
    kind (w, a), one line per bit width, layers on x in the given order."""
    layers = list(sens)
    kinds = [k for k in ("w", "a") if any(isinstance(sens[n].get(k), dict) and sens[n][k] for n in layers)]
    if not layers or not kinds:
        return None
    fig = _figure(max(6.0, 0.09 * len(layers) + 3), 2.8 * len(kinds))
    axes = fig.subplots(len(kinds), 1, squeeze=False).ravel()
    for ax, k in zip(axes, kinds):
        widths = sorted({str(b) for n in layers for b in (sens[n].get(k) or {})}, key=lambda s: float(s))
        for b in widths:
            ys = [float((sens[n].get(k) or {}).get(b, (sens[n].get(k) or {}).get(int(b) if b.isdigit() else b, math.nan))) for n in layers]
            ax.plot(range(len(layers)), ys, marker=".", lw=0.8, label=f"{k.upper()}{b}")
        groups = [sens[n].get("group") for n in layers]
        for i, g in enumerate(groups):
            if g == "content":
                ax.axvspan(i - 0.5, i + 0.5, color="orange", alpha=0.12, lw=0)
        ax.set_ylabel(f"{'weights' if k == 'w' else 'activations'}: score", fontsize=8)
        ax.set_xlabel("layer (model order; shaded: content layers)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=4)
    axes[0].set_title(title, fontsize=10)
    return _png(fig)
