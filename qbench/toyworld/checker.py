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

Two-object scenes (:class:`~qbench.toyworld.render.PairScene`): ``read_pair(image)`` reads the
background as above, then each half of the image (x < 16 and x >= 16, the other half painted
with the observed background) as one object: ``left_colour``, ``left_shape``, ``right_colour``,
``right_shape``. An object drawn on the wrong side, or missing, reads as wrong.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from qbench.toyworld.render import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLOURS,
    PAIR_ATTRIBUTES,
    PAIR_VALUES,
    POSITIONS,
    RES,
    SIZES,
    VALUES,
    PairScene,
    Scene,
    scene_from_dict,
)

OBJECT_DIST = 60.0
SIZE_THRESHOLD = (SIZES["small"] + SIZES["large"]) / 2
FILL_SQUARE, FILL_TRIANGLE = 0.89, 0.64
CHANCE = {a: 1.0 / len(VALUES[a]) for a in ATTRIBUTES} | {a: 1.0 / len(PAIR_VALUES[a]) for a in PAIR_ATTRIBUTES}
SPLIT_X = RES // 2  # two-object scenes: the left object lies in x < 16, the right one in x >= 16


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


def _background(a: np.ndarray) -> np.ndarray:
    border = np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])
    return np.median(border, axis=0)


def _read_object(a: np.ndarray, bg_obs: np.ndarray) -> dict[str, Any]:
    """colour / size / shape / position of the one object in ``a`` (None where nothing is found)."""
    out: dict[str, Any] = {"colour": None, "size": None, "shape": None, "position": None}
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


def read_scene(image: Any) -> dict[str, Any]:
    """The attributes read from one image (values are attribute names or ``None``) + measurements."""
    a = _array(image)
    bg_obs = _background(a)
    return {"background": _nearest(BACKGROUNDS, bg_obs), **_read_object(a, bg_obs)}


def read_pair(image: Any) -> dict[str, Any]:
    """Background and the left / right object's colour and shape of a two-object image."""
    a = _array(image)
    bg_obs = _background(a)
    out: dict[str, Any] = {"background": _nearest(BACKGROUNDS, bg_obs)}
    for side, cols in (("left", slice(SPLIT_X, None)), ("right", slice(None, SPLIT_X))):
        half = a.copy()
        half[:, cols] = bg_obs  # paint the other side with the background
        r = _read_object(half, bg_obs)
        out[f"{side}_colour"], out[f"{side}_shape"] = r["colour"], r["shape"]
        out[f"_{side}"] = r
    return out


def score(image: Any, scene: Scene | PairScene | dict[str, Any]) -> dict[str, int]:
    """1/0 per attribute (and ``all``) for one image against the scene its prompt describes
    (single-object attributes or, for a two-object scene, ``PAIR_ATTRIBUTES``)."""
    if isinstance(scene, dict):
        scene = scene_from_dict(scene)
    pair = isinstance(scene, PairScene)
    attrs = PAIR_ATTRIBUTES if pair else ATTRIBUTES
    r = read_pair(image) if pair else read_scene(image)
    s = {a: int(r[a] == getattr(scene, a)) for a in attrs}
    s["all"] = int(all(s[a] for a in attrs))
    return s
