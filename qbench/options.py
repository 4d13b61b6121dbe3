"""Typed option declarations shared by methods (``-O key=value``) and metrics (``-M key=value``).

A plug-in declares its options as a tuple of :class:`Opt`; :func:`parse_options` checks the
user's mapping against it in one place: unknown keys are refused with a "did you mean", values are
coerced from the strings the CLI passes (``"64"`` -> 64, ``"true"`` -> True) and checked against
their type, choices and bounds; absent keys take their defaults. Every failure is one
:class:`~qbench.errors.ConfigError` line naming the option and its owner.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from qbench.errors import ConfigError

KINDS = ("int", "float", "bool", "str", "map", "list", "any")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
#: largest integer option value (2^31 - 1): no group size, layer count or step count comes near it;
#: ``-O group_size=1e20`` once reached the tensor code as a 67-bit integer (issue 23 §2)
MAX_INT = 2**31 - 1


@dataclass(frozen=True)
class Opt:
    """One option: ``kind`` is ``int | float | bool | str | map | list | any``; ``default`` None
    means "unset" (the plug-in decides); ``choices`` restricts str values; ``minimum`` and
    ``maximum`` bound numbers (an int is always <= :data:`MAX_INT`); ``nullable`` allows an
    explicit JSON null."""

    name: str
    kind: str
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    nullable: bool = True
    maximum: float | None = None
    #: the value may name a local file or folder whose content is an input (hashed into the
    #: identity of whatever the option changes: :mod:`qbench.identity`)
    path: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"option {self.name}: unknown kind {self.kind!r}")

    def coerce(self, value: Any, owner: str) -> Any:
        """``value`` as this option's kind; :class:`ConfigError` (one bounded line) if it is not."""
        from qbench.config import show_value

        where = f"{owner} option {self.name}"
        v = self._coerce(value, where)
        hi = MAX_INT if self.kind == "int" and self.maximum is None else self.maximum
        if hi is not None and isinstance(v, (int, float)) and not isinstance(v, bool) and v > hi:
            raise ConfigError(f"{where} must be <= {hi if isinstance(hi, int) else format(hi, 'g')}, got {show_value(value)}")
        return v

    def _coerce(self, value: Any, where: str) -> Any:
        from qbench.config import show_value

        if value is None:
            if self.nullable:
                return None
            raise ConfigError(f"{where} needs a value")
        v = value
        if self.kind == "int":
            if isinstance(v, str):
                try:
                    v = int(v.strip())
                except ValueError:
                    raise ConfigError(f"{where} must be an integer, got {show_value(value)}") from None
            if isinstance(v, bool) or not isinstance(v, int):
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                else:
                    raise ConfigError(f"{where} must be an integer, got {show_value(value)}")
        elif self.kind == "float":
            if isinstance(v, str):
                try:
                    v = float(v.strip())
                except ValueError:
                    raise ConfigError(f"{where} must be a number, got {show_value(value)}") from None
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{where} must be a number, got {show_value(value)}")
            v = float(v)
            if not math.isfinite(v):
                raise ConfigError(f"{where} must be finite, got {show_value(value)}")
        elif self.kind == "bool":
            if isinstance(v, str) and v.strip().lower() in _TRUE + _FALSE:
                v = v.strip().lower() in _TRUE
            if not isinstance(v, bool):
                raise ConfigError(f"{where} must be true or false, got {show_value(value)}")
        elif self.kind == "str":
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise ConfigError(f"{where} must be a string, got {show_value(value)}")
            v = str(v).strip()
        elif self.kind == "map":
            if not isinstance(v, dict):
                raise ConfigError(f"{where} must be a mapping (a JSON object), got {show_value(value)}")
        elif self.kind == "list":
            if isinstance(v, str):
                v = [p.strip() for p in v.split(",") if p.strip()]
            if not isinstance(v, (list, tuple)) or not all(isinstance(p, str) for p in v):
                raise ConfigError(f"{where} must be a list of strings (or a comma-separated string), got {show_value(value)}")
            v = list(v)
        if self.choices and v not in self.choices:
            raise ConfigError(f"{where} must be one of {', '.join(map(str, self.choices))}, got {show_value(value)}")
        if self.minimum is not None and isinstance(v, (int, float)) and v < self.minimum:
            raise ConfigError(f"{where} must be >= {self.minimum:g}, got {show_value(value)}")
        return v


def unknown_message(owner: str, key: str, known: Iterable[str]) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    valid = f"valid: {', '.join(known)}" if known else f"{owner} takes no options"
    return f"unknown {owner} option {key!r}{hint} ({valid})"


def parse_options(owner: str, decl: Sequence[Opt], given: dict[str, Any] | None, *, defaults: bool = True) -> dict[str, Any]:
    """Validated options: ``given`` checked against ``decl`` (defaults filled in when
    ``defaults``). Raises :class:`ConfigError` on an unknown key or a bad value."""
    by_name = {o.name: o for o in decl}
    given = dict(given or {})
    if not all(isinstance(k, str) for k in given):
        raise ConfigError(f"{owner} option names must be strings")
    for key in given:
        if key not in by_name:
            raise ConfigError(unknown_message(owner, key, by_name))
    out = {o.name: o.default for o in decl} if defaults else {}
    for key, value in given.items():
        out[key] = by_name[key].coerce(value, owner)
    return out


def describe_options(decl: Sequence[Opt]) -> list[dict[str, Any]]:
    """JSON-able list of declarations (``qbench list``)."""
    return [{"name": o.name, "kind": o.kind, "default": o.default, "help": o.help, **({"choices": list(o.choices)} if o.choices else {})} for o in decl]
