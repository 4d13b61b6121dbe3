"""Image grids for reports: the same prompt and seed across configurations.

:func:`image_grid` lays out one row per prompt (in prompt order: the order of the prompt set),
one column per configuration, a header naming each column (label, the options that tell it apart
from same-named columns, tag, run id), the prompt's index and text under each row, and, when a
reference column is given, a second row of **difference heat maps** under each image row: per
pixel ``mean over RGB of |image - reference|`` (values in [0, 1]) through the ``magma`` colour
map on a fixed scale ``[0, DIFF_SCALE]`` (clipped), so that columns are comparable and images
that look alike show where they differ. Rows are assembled with diffusers' ``make_image_grid``
(images padded by a white border with ``PIL.ImageOps.expand``), text drawn with PIL.
"""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

DIFF_SCALE = 0.1  # |difference| (data range 1) at the top of the colour map
PAD = 2


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except TypeError:  # pragma: no cover - older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def _text_block(lines: list[str], width: int, size: int, fill: str = "black", bg: str = "white"):
    from PIL import Image, ImageDraw

    font = _font(size)
    line_h = size + 4
    im = Image.new("RGB", (width, line_h * max(1, len(lines)) + 4), bg)
    d = ImageDraw.Draw(im)
    for i, line in enumerate(lines):
        d.text((4, 2 + i * line_h), line, fill=fill, font=font)
    return im


def _wrap(text: str, width_px: int, size: int) -> list[str]:
    chars = max(8, int(width_px / (0.55 * size)))
    return textwrap.wrap(text, chars) or [""]


def diff_map(image, reference):
    """Heat map (RGB PIL image) of ``mean_c |image - reference|`` on ``[0, DIFF_SCALE]``, magma."""
    import numpy as np
    from matplotlib import colormaps
    from PIL import Image

    a = np.asarray(image.convert("RGB"), np.float32) / 255.0
    b = np.asarray(reference.convert("RGB"), np.float32) / 255.0
    d = np.clip(np.abs(a - b).mean(axis=2) / DIFF_SCALE, 0.0, 1.0)
    return Image.fromarray((colormaps["magma"](d)[..., :3] * 255).astype(np.uint8))


def _stack(parts: list) -> Any:
    from PIL import Image

    w = max(p.width for p in parts)
    out = Image.new("RGB", (w, sum(p.height for p in parts)), "white")
    y = 0
    for p in parts:
        out.paste(p, (0, y))
        y += p.height
    return out


def image_grid(headers: Sequence[list[str]], rows: Sequence[tuple[str, Sequence[Any]]], cell: int = 96, reference: int | None = None):
    """The grid as one RGB PIL image.

    ``headers``: per column, its header lines; ``rows``: per prompt, ``(caption, images)`` with
    one PIL image per column (same order as ``headers``); ``reference``: the column the
    difference maps compare with (None: no difference rows). Images are scaled to ``cell`` px with
    nearest-neighbour resampling (pixels stay visible)."""
    from diffusers.utils import make_image_grid
    from PIL import Image, ImageOps

    n = len(headers)
    box = cell + 2 * PAD
    width = box * n
    head = [_text_block([ln for line in h for ln in _wrap(line, box - 8, 11)], box, 11) for h in headers]
    head_h = max(h.height for h in head)
    parts = [make_image_grid([ImageOps.pad(h, (box, head_h), color="white", centering=(0, 0)) for h in head], 1, n)]

    def strip(images) -> Any:
        tiles = [ImageOps.expand(im.convert("RGB").resize((cell, cell), Image.NEAREST), border=PAD, fill="white") for im in images]
        return make_image_grid(tiles, 1, n)

    for caption, images in rows:
        parts.append(strip(images))
        if reference is not None:
            ref = images[reference]
            blank = Image.new("RGB", ref.size, (235, 235, 235))
            parts.append(strip([blank if i == reference else diff_map(im, ref) for i, im in enumerate(images)]))
        parts.append(_text_block(_wrap(caption, width - 8, 12), width, 12, fill="#222", bg="#f3f3f3"))
    if reference is not None:
        legend = (f"under each image row: |difference| to column {reference + 1} ({' '.join(headers[reference][:1])}), "
                  f"mean over RGB, magma colour map 0 (black) .. {DIFF_SCALE} (white, clipped)")
        parts.append(_text_block(_wrap(legend, width - 8, 11), width, 11, fill="#555"))
    return _stack(parts)
