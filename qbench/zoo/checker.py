"""A rule-based reader of toy-world images (GenEval-style exact scoring).

``read_scene(image)`` reads the five attributes back from pixels:

* background: the median colour of the 1-pixel border, snapped to the nearest background colour;
* object pixels: those farther than ``OBJECT_DIST`` (RGB L2) from the observed background;
* colour: the median of the farther half of the object pixels, snapped to the nearest colour;
* coverage ``alpha`` of every pixel: its projection on the background->object colour segment;
  the object's box: within the box of ``alpha > 0.5`` grown by a pixel, width = sum of each
  column's largest coverage, height likewise (sub-pixel exact for anti-aliased edges);
* size: the box's longer side (small 10 px, large 16 px; threshold 13);
* shape: fill ratio = sum(alpha) / box area (square 1.0, circle 0.785, triangle 0.5; thresholds
  0.89 and 0.64);
* position: the coverage-weighted centre x of the column profile, snapped to the nearest of left/center/right (x = 10/16/22).

No object found -> every object attribute reads ``None`` (wrong). ``score(image, scene)`` gives a
0/1 per attribute and ``all`` (every attribute right).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from qbench.zoo.render import ATTRIBUTES, BACKGROUNDS, COLOURS, POSITIONS, RES, SIZES, VALUES, Scene

OBJECT_DIST = 60.0
SIZE_THRESHOLD = (SIZES["small"] + SIZES["large"]) / 2
FILL_SQUARE, FILL_TRIANGLE = 0.89, 0.64
CHANCE = {a: 1.0 / len(VALUES[a]) for a in ATTRIBUTES}


def _nearest(table: dict[str, tuple[int, int, int]], rgb: np.ndarray) -> str:
    names = list(table)
    d = [float(np.sum((np.array(table[n], np.float32) - rgb) ** 2)) for n in names]
    return names[int(np.argmin(d))]


def _array(image: Any) -> np.ndarray:
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    image = image.convert("RGB")
    if image.size != (RES, RES):
        image = image.resize((RES, RES), Image.BOX)
    return np.asarray(image, np.float32)


def read_scene(image: Any) -> dict[str, Any]:
    """The attributes read from one image (values are attribute names or ``None``) + measurements."""
    a = _array(image)
    border = np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])
    bg_obs = np.median(border, axis=0)
    out: dict[str, Any] = {a_: None for a_ in ATTRIBUTES}
    out["background"] = _nearest(BACKGROUNDS, bg_obs)
    d = np.sqrt(((a - bg_obs) ** 2).sum(-1))
    obj = d > OBJECT_DIST
    if obj.sum() < 4:
        return out
    core = obj & (d >= np.median(d[obj]))
    col_obs = np.median(a[core], axis=0)
    out["colour"] = _nearest(COLOURS, col_obs)
    v = col_obs - bg_obs
    alpha = np.clip(((a - bg_obs) @ v) / max(float(v @ v), 1e-6), 0.0, 1.0)
    ys, xs = np.nonzero(alpha > 0.5)
    if len(xs) == 0:
        return out
    # sub-pixel box: within the alpha>0.5 box grown by one pixel, width = sum over columns of the
    # column's largest coverage (exact for anti-aliased edges), height likewise over rows
    y0, y1 = max(ys.min() - 1, 0), min(ys.max() + 2, a.shape[0])
    x0, x1 = max(xs.min() - 1, 0), min(xs.max() + 2, a.shape[1])
    region = alpha[y0:y1, x0:x1]
    colmax, rowmax = region.max(0), region.max(1)
    w, h = float(colmax.sum()), float(rowmax.sum())
    fill = float(region.sum()) / max(w * h, 1e-6)
    cx = x0 + float(((np.arange(len(colmax)) + 0.5) * colmax).sum() / max(colmax.sum(), 1e-6))
    out["size"] = "large" if max(w, h) > SIZE_THRESHOLD else "small"
    out["shape"] = "square" if fill > FILL_SQUARE else "circle" if fill > FILL_TRIANGLE else "triangle"
    out["position"] = min(POSITIONS, key=lambda p: abs(POSITIONS[p] - cx))
    out["_fill"], out["_extent"], out["_cx"] = fill, max(w, h), cx
    return out


def score(image: Any, scene: Scene | dict[str, Any]) -> dict[str, int]:
    """1/0 per attribute (and ``all``) for one image against the scene its prompt describes."""
    if isinstance(scene, dict):
        scene = Scene.from_dict(scene)
    r = read_scene(image)
    s = {a: int(r[a] == getattr(scene, a)) for a in ATTRIBUTES}
    s["all"] = int(all(s[a] for a in ATTRIBUTES))
    return s
