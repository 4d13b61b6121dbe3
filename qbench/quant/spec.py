"""Bit specs (``W4A8``), the validating :class:`QuantConfig`, and per-layer resolution.

Defaults per bit spec (torchao conventions, docs/conventions.md), each overridable in the config:

=========  ==========================================  ============================================
spec       weights                                     activations
=========  ==========================================  ============================================
W8A8       int8 symmetric, per output channel          int8 symmetric, per token, dynamic
WnA8 n<8   intn symmetric, per group of 32             int8 asymmetric, per token, dynamic
WnAm m<8   intn symmetric, per output channel          intm symmetric, per token, dynamic
W8A16      int8 symmetric, per output channel          not quantized (weight-only)
WnA16 n<8  intn symmetric, per group of 32             not quantized (weight-only)
=========  ==========================================  ============================================

Group scales (``group_scales``): ``float`` (one float32 scale per group, torchao's format, used by
the papers' simulations) or ``int8`` (integer group scales times a per-row float scale: the
two-level format the real W4A8 kernel needs, see :func:`~qbench.quant.primitives.two_level_weight`).
``auto`` picks ``int8`` in kernel mode for per-group weights of <= 4 bits and ``float`` otherwise.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from qbench.errors import ConfigError

MODES = ("simulate", "kernel")
LAYER_TYPES = ("linear", "conv2d")
COMPONENTS = ("denoiser", "text_encoder", "text_encoder_2", "vae")
_SPEC_RE = re.compile(r"^W(\d+)A(\d+)$", re.IGNORECASE)
FP_WORDS = ("fp", "fp16", "bf16", "fp32", "float", "skip", "none")


@dataclass(frozen=True)
class BitSpec:
    """``W{w}A{a}``: weight bits 2..8; activation bits 2..8, or 16 for weight-only."""

    w: int
    a: int | None  # None: activations stay in floating point (A16)

    def __post_init__(self) -> None:
        if not isinstance(self.w, int) or not 2 <= self.w <= 8:
            raise ConfigError(f"weight bits must be 2..8, got {self.w!r}")
        if self.a is not None and (not isinstance(self.a, int) or not 2 <= self.a <= 8):
            raise ConfigError(f"activation bits must be 2..8 or 16 (not quantized), got {self.a!r}")

    @classmethod
    def parse(cls, spec: str | BitSpec) -> BitSpec:
        if isinstance(spec, BitSpec):
            return spec
        if not isinstance(spec, str):
            raise ConfigError(f"bit spec must be a string like W4A8, got {spec!r}")
        m = _SPEC_RE.match(spec.strip())
        if not m:
            raise ConfigError(f"bad bit spec {spec!r}: expected W<bits>A<bits>, e.g. W4A8, W8A8, W4A16")
        w, a = int(m.group(1)), int(m.group(2))
        if a in (16, 32):
            return cls(w, None)
        if a > 8:
            raise ConfigError(f"bad bit spec {spec!r}: activation bits must be 2..8, or 16 for weight-only")
        if w > 8:
            raise ConfigError(f"bad bit spec {spec!r}: weight bits must be 2..8")
        return cls(w, a)

    def __str__(self) -> str:
        return f"W{self.w}A{16 if self.a is None else self.a}"


@dataclass(frozen=True)
class LayerSpec:
    """Fully resolved quantization of one layer (no ``auto`` left)."""

    w_bits: int
    a_bits: int | None
    w_granularity: str  # tensor | channel | group
    group_size: int | None
    w_symmetric: bool
    w_clip: str  # minmax | mse
    group_scales: str | None  # float | int8 (per-group only)
    a_granularity: str  # token | tensor
    a_symmetric: bool
    a_static: bool
    a_calib: str
    mode: str

    @property
    def bits(self) -> str:
        return str(BitSpec(self.w_bits, self.a_bits))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Override:
    """A per-layer override: ``fp`` (keep the layer in floating point) or new bits / options."""

    fp: bool = False
    w: int | None = None
    a: int | None = None
    a_set: bool = False  # whether ``a`` was given (``a: 16`` sets it to None = not quantized)
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, key: str, value: Any) -> Override:
        where = f"override for {key!r}"
        if value is None or (isinstance(value, str) and value.strip().lower() in FP_WORDS):
            return cls(fp=True)
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected bits, a W#A# spec, 'fp16' or a map, got {value!r}")
        if isinstance(value, int):
            BitSpec(value, 8)  # validates the weight bits
            return cls(w=value)
        if isinstance(value, str):
            b = BitSpec.parse(value)
            return cls(w=b.w, a=b.a, a_set=True)
        if isinstance(value, dict):
            d = dict(value)
            allowed = {"w", "a", "group_size", "w_granularity", "w_symmetric", "a_granularity", "a_symmetric"}
            bad = sorted(set(d) - allowed)
            if bad:
                raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, bad))} (allowed: {', '.join(sorted(allowed))})")
            w = d.pop("w", None)
            a_set = "a" in d
            a = d.pop("a", None)
            if isinstance(w, str) and w.lower() in FP_WORDS:
                return cls(fp=True)
            if isinstance(a, str) and a.lower() in FP_WORDS:
                a = None
            if a == 16:
                a = None
            try:
                BitSpec(int(w) if w is not None else 8, int(a) if a is not None else None)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: bits must be integers, got w={w!r} a={a!r}") from None
            return cls(w=None if w is None else int(w), a=None if a is None else int(a), a_set=a_set, options=tuple(sorted(d.items())))
        raise ConfigError(f"{where}: expected bits, a W#A# spec, 'fp16' or a map, got {type(value).__name__}")


def load_overrides(source: str | os.PathLike | dict[str, Any] | None) -> dict[str, Any]:
    """Per-layer overrides from a dict or a YAML/JSON file (``layer.name: {w: 8, a: 8}`` / ``fp16`` / ``8``).

    Raises ConfigError (one line naming the file) when the file is missing, unreadable, not UTF-8,
    not YAML/JSON or not a map."""
    if source is None:
        return {}
    if isinstance(source, dict):
        return dict(source)
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise ConfigError(f"layer override file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ConfigError(f"layer override file {path} is not UTF-8 text (invalid byte at offset {e.start}); expected YAML/JSON `layer.name: bits`") from None
    except OSError as e:
        raise ConfigError(f"cannot read layer override file {path}: {e.strerror or e}") from None
    import yaml

    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:  # report the file and the parser's first line
        raise ConfigError(f"cannot parse layer override file {path}: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"layer override file {path} must hold a map of layer name -> bits, got {type(data).__name__}")
    return data


#: a header comment on the first line of a per-layer file that qbench wrote: ``# ... for <model> --bits <W#A#>...``
_MADE_FOR = re.compile(r"^#.*\bfor (\S+) --bits (W\d+A\d+)\b")


def made_for(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(model, bits)`` named by the first-line header comment of a per-layer file written by qbench
    (e.g. ``# MixDQ allocation (qbench mixdq) for toy-flux --bits W3A8: ...``), or None for a file
    without one (hand-written or public maps) or one that cannot be read. Reads the first line only."""
    try:
        with open(path, encoding="utf-8") as f:
            m = _MADE_FOR.match(f.readline())
    except (OSError, UnicodeDecodeError, TypeError):
        return None
    return (m.group(1), m.group(2)) if m else None


def _is_pattern(key: str) -> bool:
    return any(c in key for c in "*?[")


def _as_tuple(v: Any, what: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        return tuple(p.strip() for p in v.split(",") if p.strip())
    if isinstance(v, Iterable):
        out = tuple(str(p) for p in v)
        return out
    raise ConfigError(f"{what} must be a list of strings, got {v!r}")


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how; validated on construction (``ConfigError`` with one clear line).

    ``None`` / ``"auto"`` fields take the per-spec defaults of the module docstring. ``include`` /
    ``exclude`` are ``fnmatch`` patterns on module names (relative to the module given to
    ``quantize_``); ``overrides`` maps exact names or patterns to :class:`Override` values."""

    bits: BitSpec
    mode: str = "simulate"
    w_granularity: str | None = None
    group_size: int = 32
    w_symmetric: bool = True
    w_clip: str = "minmax"
    group_scales: str = "auto"
    a_granularity: str = "token"
    a_symmetric: bool | None = None
    a_static: bool = False
    a_calib: str = "minmax"
    layer_types: tuple[str, ...] = ("linear",)
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    overrides: tuple[tuple[str, Override], ...] = field(default=())
    components: tuple[str, ...] = ("denoiser",)

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)
        set_("bits", BitSpec.parse(self.bits))
        if self.mode not in MODES:
            raise ConfigError(f"unknown quantization mode {self.mode!r}; expected simulate or kernel")
        if self.w_granularity not in (None, "auto", "tensor", "channel", "group"):
            raise ConfigError(f"unknown weight granularity {self.w_granularity!r}; expected tensor, channel or group")
        if self.w_granularity == "auto":
            set_("w_granularity", None)
        if not isinstance(self.group_size, int) or isinstance(self.group_size, bool) or self.group_size < 2 or self.group_size % 2:
            raise ConfigError(f"group_size must be an even integer >= 2 (e.g. 32, 64, 128), got {self.group_size!r}")
        if self.w_clip not in ("minmax", "mse"):
            raise ConfigError(f"unknown weight clipping {self.w_clip!r}; expected minmax or mse")
        if self.group_scales not in ("auto", "float", "int8"):
            raise ConfigError(f"unknown group_scales {self.group_scales!r}; expected auto, float or int8")
        if self.a_granularity not in ("token", "tensor"):
            raise ConfigError(f"unknown activation granularity {self.a_granularity!r}; expected token or tensor")
        if self.a_calib not in ("minmax", "percentile", "mse"):
            raise ConfigError(f"unknown activation calibration {self.a_calib!r}; expected minmax, percentile or mse")
        lt = tuple(t.lower() for t in _as_tuple(self.layer_types, "layer_types"))
        bad = [t for t in lt if t not in LAYER_TYPES]
        if bad or not lt:
            raise ConfigError(f"unknown layer type(s) {bad or lt}; expected {', '.join(LAYER_TYPES)}")
        set_("layer_types", lt)
        comps = _as_tuple(self.components, "components")
        bad = [c for c in comps if c not in COMPONENTS]
        if bad or not comps:
            raise ConfigError(f"unknown component(s) {', '.join(bad) or '(none)'}; expected {', '.join(COMPONENTS)}")
        set_("components", comps)
        set_("include", _as_tuple(self.include, "include") or ("*",))
        set_("exclude", _as_tuple(self.exclude, "exclude"))
        ov = self.overrides
        if isinstance(ov, (str, os.PathLike)):
            ov = load_overrides(ov)
        if isinstance(ov, dict):
            ov = tuple((str(k), v if isinstance(v, Override) else Override.parse(str(k), v)) for k, v in ov.items())
        set_("overrides", tuple(ov))
        if self.a_static and self.a_granularity == "token":
            raise ConfigError("static (calibrated) activation quantization needs a_granularity='tensor'")
        # resolve once (and every override) so that impossible combinations fail now, not at a layer
        self.resolve_spec(self.bits.w, self.bits.a)
        for key, o in self.overrides:
            if not o.fp:
                try:
                    self.resolve_spec(o.w if o.w is not None else self.bits.w, o.a if o.a_set else self.bits.a, dict(o.options))
                except ConfigError as e:
                    raise ConfigError(f"override for {key!r}: {e}") from None

    # -- resolution --------------------------------------------------------------------------------
    def resolve_spec(self, w: int, a: int | None, options: dict[str, Any] | None = None) -> LayerSpec:
        o = dict(options or {})
        w_gran = o.get("w_granularity") or self.w_granularity
        if w_gran is None:
            w_gran = "channel" if (w == 8 or (a is not None and a < 8)) else "group"
        group_size = o.get("group_size", self.group_size) if w_gran == "group" else None
        if group_size is not None and (not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 2 or group_size % 2):
            raise ConfigError(f"group_size must be an even integer >= 2 (e.g. 32, 64, 128), got {group_size!r}")
        a_sym = o.get("a_symmetric", self.a_symmetric)
        if a_sym is None:
            a_sym = not (a == 8 and w < 8)  # torchao 8da4w: asymmetric int8 tokens; int8/int4 dyn: symmetric
        w_sym = bool(o.get("w_symmetric", self.w_symmetric))
        gs = None
        if w_gran == "group":
            gs = self.group_scales
            if gs == "auto":
                gs = "int8" if (self.mode == "kernel" and w <= 4 and w_sym) else "float"
            if gs == "int8" and (w > 4 or not w_sym):
                raise ConfigError(f"group_scales='int8' needs symmetric weights of at most 4 bits, got W{w} {'sym' if w_sym else 'asym'}")
        spec = LayerSpec(
            w_bits=w,
            a_bits=a,
            w_granularity=w_gran,
            group_size=group_size,
            w_symmetric=w_sym,
            w_clip=self.w_clip,
            group_scales=gs,
            a_granularity=o.get("a_granularity", self.a_granularity),
            a_symmetric=bool(a_sym),
            a_static=self.a_static and a is not None,
            a_calib=self.a_calib,
            mode=self.mode,
        )
        if spec.mode == "kernel":
            check_kernel_supported(spec)
        return spec

    def spec_for(self, name: str) -> LayerSpec | None:
        """The resolved spec of the layer ``name`` (None: keep it in floating point).

        The last matching override wins over include/exclude (so an override can quantize an
        excluded layer, or keep an included one in fp)."""
        ov = None
        for key, o in self.overrides:
            if key == name or (_is_pattern(key) and fnmatch.fnmatchcase(name, key)):
                ov = o
        if ov is None:
            if not any(fnmatch.fnmatchcase(name, p) for p in self.include):
                return None
            if any(fnmatch.fnmatchcase(name, p) for p in self.exclude):
                return None
            return self.resolve_spec(self.bits.w, self.bits.a)
        if ov.fp:
            return None
        w = ov.w if ov.w is not None else self.bits.w
        a = ov.a if ov.a_set else self.bits.a
        return self.resolve_spec(w, a, dict(ov.options))

    def replace(self, **changes: Any) -> QuantConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (stored with runs)."""
        return {
            "bits": str(self.bits),
            "mode": self.mode,
            "w_granularity": self.w_granularity or "auto",
            "group_size": self.group_size,
            "w_symmetric": self.w_symmetric,
            "w_clip": self.w_clip,
            "group_scales": self.group_scales,
            "a_granularity": self.a_granularity,
            "a_symmetric": "auto" if self.a_symmetric is None else self.a_symmetric,
            "a_static": self.a_static,
            "a_calib": self.a_calib if self.a_static else None,
            "layer_types": list(self.layer_types),
            "include": list(self.include),
            "exclude": list(self.exclude),
            "overrides": {k: _override_repr(o) for k, o in self.overrides},
            "components": list(self.components),
        }


def _quant_options() -> tuple:
    from qbench.options import Opt

    return (
        Opt("group_size", "int", None, "input features per weight group (per-group weights)", minimum=2),
        Opt("layers", "any", None, "per-layer overrides: a YAML/JSON file or a mapping `layer.name: {w: 8, a: 8} | 8 | fp16` (fnmatch keys allowed; `<component>:<name>` for other components)", path=True),
        Opt("include", "list", None, "fnmatch patterns of layer names to quantize (default: all)"),
        Opt("exclude", "list", None, "fnmatch patterns of layer names to keep in floating point"),
        Opt("components", "list", None, f"pipeline components to quantize ({', '.join(COMPONENTS)}; default denoiser)"),
        Opt("layer_types", "list", None, f"layer types to quantize ({', '.join(LAYER_TYPES)}; default linear)"),
        Opt("w_granularity", "str", None, "weight scale granularity", choices=("auto", "tensor", "channel", "group")),
        Opt("w_symmetric", "bool", None, "symmetric weights (default true)"),
        Opt("w_clip", "str", None, "weight range: min-max or MSE-optimal clipping", choices=("minmax", "mse")),
        Opt("group_scales", "str", None, "per-group scales: float, or integer (two-level, the kernel's format)", choices=("auto", "float", "int8")),
        Opt("a_granularity", "str", None, "activation scale granularity", choices=("token", "tensor")),
        Opt("a_symmetric", "bool", None, "symmetric activations (default: per bit spec)"),
        Opt("a_static", "bool", None, "static (calibrated) activation ranges instead of dynamic"),
        Opt("a_calib", "str", None, "static activation range estimator", choices=("minmax", "percentile", "mse")),
    )


#: the quantizer's options (``-O key=value`` of quantizing methods), typed
QUANT_OPTIONS = _quant_options()


def _override_repr(o: Override) -> Any:
    if o.fp:
        return "fp16"
    d: dict[str, Any] = {}
    if o.w is not None:
        d["w"] = o.w
    if o.a_set:
        d["a"] = 16 if o.a is None else o.a
    d.update(dict(o.options))
    return d


def check_kernel_supported(spec: LayerSpec) -> None:
    """Refuse layer specs the kernel mode cannot execute with integer arithmetic."""
    if spec.a_bits is None:
        return  # weight-only: packed storage, dequantized per call; any weight format works
    if not spec.w_symmetric:
        raise ConfigError(f"kernel mode {spec.bits} needs symmetric weights (asymmetric weights: use --mode simulate)")
    if spec.w_granularity == "group" and spec.group_scales != "int8":
        raise ConfigError(
            f"kernel mode {spec.bits} with per-group weights needs group_scales='int8' (integer group scales, "
            "<= 4-bit weights); float group scales are simulate-only"
        )
