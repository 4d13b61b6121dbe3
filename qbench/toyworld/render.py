"""Scenes, the deterministic renderer and the caption grammar of the toy world.

A :class:`Scene` is one shape on a plain background, described by five discrete attributes
(background colour, object colour, size, shape, horizontal position) plus a sub-pixel jitter
that only the renderer sees. A :class:`PairScene` is two small shapes side by side (one at the
left position, one at the right) on one background: five attributes (background, left colour,
left shape, right colour, right shape), captions built from the same words (no new tokens). ``render(scene)`` and ``caption(scene, wording)`` are both exact
functions of the scene, so every caption has ground-truth images: ``render`` of its scene with
any jitter.
"""
from __future__ import annotations

import hashlib
import io
import itertools
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

RES = 32  # image side in pixels
SUPERSAMPLE = 8  # shapes are drawn at RES*SUPERSAMPLE and box-filtered down (anti-aliasing)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 190),
    "orange": (250, 130, 0),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}
SIZES: dict[str, int] = {"small": 10, "large": 16}  # side of the bounding box in pixels
POSITIONS: dict[str, int] = {"left": 10, "center": 16, "right": 22}  # x of the box centre
CENTER_Y = 16
JITTER = 1  # the box centre moves by up to +-JITTER pixels in x and y

ATTRIBUTES: tuple[str, ...] = ("background", "colour", "size", "shape", "position")
VALUES: dict[str, tuple[str, ...]] = {
    "background": tuple(BACKGROUNDS),
    "colour": tuple(COLOURS),
    "size": tuple(SIZES),
    "shape": SHAPES,
    "position": tuple(POSITIONS),
}


class _SceneBase:
    """What single- and two-object scenes share: validation, (de)serialisation of their attributes,
    jitter and one-attribute changes. Subclasses set ``_attributes`` and ``_values``."""

    _attributes: tuple[str, ...] = ()
    _values: dict[str, tuple[str, ...]] = {}

    def __post_init__(self) -> None:
        for a in self._attributes:
            if getattr(self, a) not in self._values[a]:
                raise ValueError(f"unknown {a} {getattr(self, a)!r}; choose from {self._values[a]}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        return cls(**{k: d[k] for k in cls._attributes}, dx=float(d.get("dx", 0.0)), dy=float(d.get("dy", 0.0)))

    def with_jitter(self, rng: np.random.Generator):
        dx, dy = rng.uniform(-JITTER, JITTER, size=2)
        return replace(self, dx=float(dx), dy=float(dy))

    def changed(self, attribute: str, rng: np.random.Generator):
        """The same scene with one attribute set to a different value (a hard negative)."""
        choices = [v for v in self._values[attribute] if v != getattr(self, attribute)]
        return replace(self, **{attribute: choices[int(rng.integers(len(choices)))]})


@dataclass(frozen=True)
class Scene(_SceneBase):
    background: str
    colour: str
    size: str
    shape: str
    position: str
    dx: float = 0.0  # jitter in pixels, in [-JITTER, JITTER]
    dy: float = 0.0

    _attributes = ATTRIBUTES
    _values = VALUES

    @property
    def key(self) -> tuple[str, ...]:
        """The attributes a caption describes (jitter excluded)."""
        return tuple(getattr(self, a) for a in ATTRIBUTES)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def all_scenes() -> list[Scene]:
    """Every attribute combination (3*6*2*3*3 = 324), in a fixed order, without jitter."""
    return [Scene(*combo) for combo in itertools.product(*(VALUES[a] for a in ATTRIBUTES))]


def random_scene(rng: np.random.Generator) -> Scene:
    return Scene(*(VALUES[a][int(rng.integers(len(VALUES[a])))] for a in ATTRIBUTES)).with_jitter(rng)


def scene_hash(scene: Scene) -> int:
    return int.from_bytes(hashlib.sha256("|".join(scene.key).encode()).digest()[:8], "big")


# -- two-object scenes ---------------------------------------------------------------------------
PAIR_ATTRIBUTES: tuple[str, ...] = ("background", "left_colour", "left_shape", "right_colour", "right_shape")
PAIR_VALUES: dict[str, tuple[str, ...]] = {
    "background": tuple(BACKGROUNDS),
    "left_colour": tuple(COLOURS), "left_shape": SHAPES,
    "right_colour": tuple(COLOURS), "right_shape": SHAPES,
}
PAIR_SIZE = "small"  # both objects are small (10 px) at the left (x=10) and right (x=22) positions


@dataclass(frozen=True)
class PairScene(_SceneBase):
    background: str
    left_colour: str
    left_shape: str
    right_colour: str
    right_shape: str
    dx: float = 0.0  # one jitter for both objects, so the 2-pixel gap between them is kept
    dy: float = 0.0

    _attributes = PAIR_ATTRIBUTES
    _values = PAIR_VALUES

    @property
    def key(self) -> tuple[str, ...]:
        return ("pair",) + tuple(getattr(self, a) for a in PAIR_ATTRIBUTES)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "pair", **asdict(self)}

    def objects(self) -> tuple[Scene, Scene]:
        """The two objects as single-object scenes (same background and jitter)."""
        return (Scene(self.background, self.left_colour, PAIR_SIZE, self.left_shape, "left", self.dx, self.dy),
                Scene(self.background, self.right_colour, PAIR_SIZE, self.right_shape, "right", self.dx, self.dy))


def all_pair_scenes() -> list[PairScene]:
    """Every two-object combination (3 * 18 * 18 = 972), in a fixed order, without jitter."""
    return [PairScene(*combo) for combo in itertools.product(*(PAIR_VALUES[a] for a in PAIR_ATTRIBUTES))]


def scene_from_dict(d: dict[str, Any]) -> "Scene | PairScene":
    """A prompt's ``meta["scene"]`` back as a scene of the right kind."""
    return PairScene.from_dict(d) if d.get("kind") == "pair" else Scene.from_dict(d)


# -- renderer ---------------------------------------------------------------------------------
def _shape_polygon(shape: str, cx: float, cy: float, side: float, s: int):
    h = side / 2
    if shape == "square":
        return [((cx - h) * s, (cy - h) * s), ((cx + h) * s, (cy + h) * s)]
    if shape == "circle":
        return [((cx - h) * s, (cy - h) * s), ((cx + h) * s, (cy + h) * s)]
    # upward isosceles triangle filling its bounding box: base = height = side
    return [(cx * s, (cy - h) * s), ((cx + h) * s, (cy + h) * s), ((cx - h) * s, (cy + h) * s)]


def render_mask(scene: Scene, res: int = RES) -> np.ndarray:
    """Coverage of each pixel by the shape, float32 in [0, 1] (anti-aliased by supersampling)."""
    s = SUPERSAMPLE * res // RES
    scale = res / RES
    big = Image.new("L", (res * SUPERSAMPLE, res * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(big)
    cx = (POSITIONS[scene.position] + scene.dx) * scale
    cy = (CENTER_Y + scene.dy) * scale
    side = SIZES[scene.size] * scale
    pts = _shape_polygon(scene.shape, cx, cy, side, SUPERSAMPLE)
    if scene.shape == "square":
        draw.rectangle(pts, fill=255)
    elif scene.shape == "circle":
        draw.ellipse(pts, fill=255)
    else:
        draw.polygon(pts, fill=255)
    small = big.resize((res, res), Image.BOX)
    del s
    return np.asarray(small, dtype=np.float32) / 255.0


def render(scene: Scene | PairScene, res: int = RES) -> Image.Image:
    """The scene as an RGB image (exact function of the scene, jitter included)."""
    bg = np.array(BACKGROUNDS[scene.background], np.float32)
    img = np.broadcast_to(bg, (res, res, 3)).copy()
    for obj in (scene.objects() if isinstance(scene, PairScene) else (scene,)):
        a = render_mask(obj, res)[..., None]
        img = img * (1 - a) + np.array(COLOURS[obj.colour], np.float32) * a
    return Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8), "RGB")


# -- caption grammar --------------------------------------------------------------------------
_POS_PHRASES = {
    "left": ("on the left", "at the left", "to the left"),
    "center": ("in the center", "in the middle", "at the center"),
    "right": ("on the right", "at the right", "to the right"),
}
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
TEMPLATES: tuple[str, ...] = (
    "a {size} {colour} {shape} {pos} on a {bg} background",
    "a {colour} {shape}, {size}, {pos}, {bg} background",
    "{size} {colour} {shape} {pos} against a {bg} background",
    "a picture of a {size} {colour} {shape} {pos}, the background is {bg}",
    "on a {bg} background, a {size} {colour} {shape} {pos}",
    "an image of a {size} {colour} {shape} {pos} on {bg}",
)
N_WORDINGS = len(TEMPLATES) * 3  # wording index selects template, size word and position phrase


PAIR_TEMPLATES: tuple[str, ...] = (
    "{l} on the left, {r} on the right, on a {bg} background",
    "on a {bg} background, {r} on the right, {l} on the left",
    "a picture of {l} at the left, {r} at the right, {bg} background",
    "an image of {l} to the left, {r} to the right on {bg}",
    "{r} to the right, {l} to the left, against a {bg} background",
    "{l} at the left, {r} at the right, the background is {bg}",
)
N_PAIR_WORDINGS = len(PAIR_TEMPLATES)


def _with_article(colour: str, shape: str) -> str:
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}"


def caption(scene: Scene | PairScene, wording: int = 0) -> str:
    """The caption of ``scene`` in wording number ``wording`` (any int; taken modulo the number of
    wordings of the scene's kind: N_WORDINGS or N_PAIR_WORDINGS)."""
    if isinstance(scene, PairScene):
        t = PAIR_TEMPLATES[wording % N_PAIR_WORDINGS]
        return t.format(l=_with_article(scene.left_colour, scene.left_shape),
                        r=_with_article(scene.right_colour, scene.right_shape), bg=scene.background)
    w = wording % N_WORDINGS
    t = TEMPLATES[w % len(TEMPLATES)]
    j = w // len(TEMPLATES)
    sizes = _SIZE_WORDS[scene.size]
    pos = _POS_PHRASES[scene.position]
    return t.format(
        size=sizes[j % len(sizes)], colour=scene.colour, shape=scene.shape, pos=pos[j % len(pos)], bg=scene.background
    )


def vocabulary() -> list[str]:
    """Every word the grammar (and the quality prompts) can produce, sorted."""
    words: set[str] = set()
    for sc in all_scenes():
        for w in range(N_WORDINGS):
            words.update(caption(sc, w).replace(",", " ").split())
    for q in GOOD_WORDS + BAD_WORDS:
        words.update(q.lower().replace(".", " ").split())
    return sorted(words)


# -- quality: degradations and the words that go with them ------------------------------------
GOOD_WORDS: tuple[str, ...] = ("Good photo.", "a good photo", "a clean image", "a sharp picture")
BAD_WORDS: tuple[str, ...] = ("Bad photo.", "a bad photo", "a noisy image", "a blurry picture")
DEGRADATIONS: tuple[str, ...] = ("noise", "blur", "blocking", "colour-shift", "noise+blur")


def degrade(img: Image.Image, kind: str, rng: np.random.Generator, strength: float | None = None) -> Image.Image:
    """A degraded copy of ``img``; ``strength`` in [0, 1] (random in [0.3, 1] if None)."""
    s = float(rng.uniform(0.3, 1.0)) if strength is None else float(strength)
    if kind == "noise":
        a = np.asarray(img, np.float32) + rng.normal(0, 10 + 50 * s, size=(img.height, img.width, 3))
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(0.7 + 1.8 * s))
    if kind == "blocking":
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(round(20 - 17 * s)))
        buf.seek(0)
        out = Image.open(buf).convert("RGB")
        f = 2 if s < 0.6 else 4
        return out.resize((img.width // f, img.height // f), Image.BILINEAR).resize(img.size, Image.NEAREST)
    if kind == "colour-shift":
        a = np.asarray(img, np.float32)
        shift = rng.normal(0, 25 + 45 * s, size=3)
        gray = a.mean(-1, keepdims=True)
        a = gray + (a - gray) * (1 - 0.6 * s) + shift
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")
    if kind == "noise+blur":
        return degrade(degrade(img, "blur", rng, s * 0.7), "noise", rng, s * 0.7)
    raise ValueError(f"unknown degradation {kind!r}; choose from {DEGRADATIONS}")
