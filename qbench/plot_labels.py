"""Point labels that do not overprint: a greedy placement measured with matplotlib's renderer.

For each point in turn, candidate offsets around it (8 directions on rings of growing radius)
are tried; the first whose text box (``Text.get_window_extent``, in display pixels) overlaps no
label already placed, no marker and stays inside the axes is kept, with a thin leader line when
it sits away from its point. A label with no free place gets a number beside its point instead
and its text goes into a key under the panel (so every label is readable and none overlaps).
Hand-written (about 60 lines): matplotlib has no label repulsion of its own, and the usual
package for it (adjustText) moves labels iteratively without guaranteeing no overlap.
"""
from __future__ import annotations

import math
from typing import Any

RINGS = (6, 14, 24, 36, 50, 66, 84)  # offsets from the point, points (1/72 inch)
DIRECTIONS = (45, 135, -45, -135, 0, 180, 90, -90, 20, 160, -20, -160, 70, 110, -70, -110)  # degrees: upper right first


def _text_box(ann, renderer):
    """The box of an annotation's text alone (``Annotation.get_window_extent`` adds its leader line)."""
    from matplotlib.text import Text

    ann.update_positions(renderer)
    return Text.get_window_extent(ann, renderer)


def _overlaps(a, b, pad: float = 1.0) -> bool:
    return not (a.x1 + pad <= b.x0 or b.x1 + pad <= a.x0 or a.y1 + pad <= b.y0 or b.y1 + pad <= a.y0)


def place_labels(ax, points: list[tuple[float, float]], texts: list[str], fontsize: float) -> tuple[list[Any], list[str]]:
    """Annotate ``points`` (data coordinates) of ``ax`` with ``texts``; returns ``(artists,
    key)``: the placed annotations (each text box disjoint from the others' and from the
    markers) and the ``"n: text"`` lines of labels shown as a number (the caller prints them,
    e.g. under the x label). Call after the figure's layout is final: boxes are display pixels."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    axbox = ax.get_window_extent(renderer)
    disp = [ax.transData.transform(p) for p in points]
    r_mark = 5.0 * fig.dpi / 72  # a marker's half size, pixels
    from matplotlib.transforms import Bbox

    taken = [Bbox([[x - r_mark, y - r_mark], [x + r_mark, y + r_mark]]) for x, y in disp]
    placed, keyed = [], []
    for i, (p, text) in enumerate(zip(points, texts)):
        ann = None
        for r in RINGS:
            for d in DIRECTIONS:
                dx, dy = r * math.cos(math.radians(d)), r * math.sin(math.radians(d))
                ha = "left" if dx > 0.5 else "right" if dx < -0.5 else "center"
                va = "bottom" if dy > 0.5 else "top" if dy < -0.5 else "center"
                cand = ax.annotate(text, p, xytext=(dx, dy), textcoords="offset points", fontsize=fontsize, ha=ha, va=va,
                                   arrowprops={"arrowstyle": "-", "color": "0.55", "lw": 0.5, "shrinkA": 0, "shrinkB": 3} if r > RINGS[0] else None)
                box = _text_box(cand, renderer)
                inside = axbox.x0 <= box.x0 and box.x1 <= axbox.x1 and axbox.y0 <= box.y0 and box.y1 <= axbox.y1
                if inside and not any(_overlaps(box, t) for t in taken):
                    ann = cand
                    break
                cand.remove()
            if ann is not None:
                break
        if ann is None:  # no free place: a number here, the text in the key
            keyed.append(f"{len(keyed) + 1}: {text}")
            for r in RINGS:
                for d in DIRECTIONS:
                    dx, dy = r * math.cos(math.radians(d)), r * math.sin(math.radians(d))
                    cand = ax.annotate(str(len(keyed)), p, xytext=(dx, dy), textcoords="offset points", fontsize=fontsize, ha="center", va="center",
                                       fontweight="bold")
                    box = _text_box(cand, renderer)
                    if not any(_overlaps(box, t) for t in taken):
                        ann = cand
                        break
                    cand.remove()
                if ann is not None:
                    break
        if ann is not None:
            taken.append(_text_box(ann, renderer))
            placed.append(ann)
    return placed, keyed


def label_points(fig, panels: list[tuple[Any, list[tuple[float, float]], list[str], str]], fontsize: float) -> list[Any]:
    """Label every panel ``(ax, points, texts, xlabel)`` of ``fig`` without overlap, then freeze
    the layout (so the measured places stay true); a panel's keyed labels go under its x label.
    Returns every placed annotation."""
    import textwrap

    fig.canvas.draw()
    done: dict[int, tuple[list[Any], list[str]]] = {}
    for i, (ax, pts, texts, xlabel) in enumerate(panels):
        done[i] = place_labels(ax, pts, texts, fontsize)
    keyed = [i for i, (_, k) in done.items() if k]

    def key(i: int) -> str:  # wrapped to the panel's width (about 0.55 em per character)
        chars = max(20, int(panels[i][0].get_window_extent().width / (0.55 * fontsize * fig.dpi / 72)))
        return "\n" + textwrap.fill("   ".join(done[i][1]), chars) if done[i][1] else ""

    for i in keyed:
        panels[i][0].set_xlabel(panels[i][3] + key(i))
    if keyed:  # the x labels grew: lay out again, then place again in the final axes
        fig.canvas.draw()
        for i, (ax, pts, texts, xlabel) in enumerate(panels):
            for a in done[i][0]:
                a.remove()
            done[i] = place_labels(ax, pts, texts, fontsize)
            ax.set_xlabel(xlabel + key(i))
    fig.set_layout_engine("none")
    return [a for placed, _ in done.values() for a in placed]


def label_boxes(artists: list[Any]) -> list[Any]:
    """The display-pixel boxes of ``artists`` (for tests and checks)."""
    renderer = artists[0].figure.canvas.get_renderer() if artists else None
    return [_text_box(a, renderer) for a in artists]


def any_overlap(boxes: list[Any]) -> bool:
    """Whether two of ``boxes`` overlap (touching edges do not count)."""
    return any(_overlaps(a, b, pad=0.0) for i, a in enumerate(boxes) for b in boxes[i + 1:])
