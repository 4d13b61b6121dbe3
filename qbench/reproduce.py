"""Published tables as data: ``qbench reproduce`` specs (``qbench/published/*.yaml``).

A spec holds one table of a paper, typed in from a cited source (``source``: the paper with its
arXiv id, which table, the file or page the numbers were copied from), the protocol that produced
it (``protocol``: model, steps, guidance, resolution, prompt set and n, seed rule, metrics with
their protocols and reference statistics, known deviations of qbench's protocol), and its rows
(``rows``: a label, the published numbers by qbench metric name, and the qbench method, bits and
options that make the same configuration, or ``why`` qbench has none). The rows with a method are
the cells of a :class:`~qbench.sweep.Sweep` (one :class:`~qbench.config.RunConfig` each).

Specs are validated when loaded: every problem is one line (:class:`~qbench.errors.ManyErrors`
when there are several). The prompt set is a spec string (``mjhq-5k:5000``) resolved only when a
cell runs or is costed, so a spec may name a prompt set registered on another branch.

``twins=True`` maps the table onto the offline tiny twins: the real model becomes the registered
model of the same family built from random weights (``ModelSpec.tiny_builder``), the prompt set a
small local one (default ``coco2017:2``), the resolution the twin's, and every learned metric a
random stand-in (``-M standin=true``). Those numbers exercise the plumbing and mean nothing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from qbench.config import RunConfig, show_value
from qbench.errors import ConfigError, ManyErrors, QBenchError

SPEC_PACKAGE = "qbench"
SPEC_FOLDER = "published"
TWIN_PROMPTS = "coco2017:2"
_TOP = {"name": str, "title": str, "source": dict, "protocol": dict, "rows": list}
_SOURCE = ("paper", "table", "where", "note")
_PROTOCOL = {"model": str, "steps": int, "guidance": (int, float), "resolution": int, "prompts": str, "n": int, "seed": int,
             "seed_rule": str, "metrics": list, "deviations": list}
_METRIC = ("metric", "column", "protocol", "reference", "decimals")
_ROW = ("label", "method", "bits", "mode", "options", "published", "why", "deviations")


@dataclass
class Row:
    label: str
    published: dict[str, float]
    method: str | None = None
    bits: str | None = None
    mode: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    why: str | None = None  # why qbench has no cell for this row
    deviations: list[str] = field(default_factory=list)


@dataclass
class TableSpec:
    name: str
    title: str
    source: dict[str, str]
    protocol: dict[str, Any]
    rows: list[Row]
    path: str = ""

    @property
    def metrics(self) -> list[dict[str, str]]:
        return self.protocol["metrics"]

    @property
    def runnable(self) -> list[Row]:
        return [r for r in self.rows if r.method]


def spec_dir() -> str:
    """The folder of the shipped specs (package data, so a wheel carries them)."""
    from importlib.resources import files

    return str(files(SPEC_PACKAGE) / SPEC_FOLDER)


def list_specs() -> list[str]:
    """Names of the shipped specs, sorted."""
    d = spec_dir()
    return sorted(f[:-5] for f in os.listdir(d) if f.endswith(".yaml")) if os.path.isdir(d) else []


def load_spec(name_or_path: str) -> TableSpec:
    """A shipped spec by name, or a spec file by path; validated (:func:`parse_spec`).
    Raises :class:`ConfigError` for an unknown name, :class:`ManyErrors` for several problems."""
    from qbench.sweep import _read_yaml

    path = name_or_path
    if not (name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path):
        path = os.path.join(spec_dir(), f"{name_or_path}.yaml")
        if not os.path.isfile(path):
            raise ConfigError(f"no published table {name_or_path!r}; known: {', '.join(list_specs()) or 'none'} (`qbench reproduce --list`)")
    return parse_spec(_read_yaml(path), path)


def _check_map(d: Any, allowed, what: str, bad) -> dict:
    if not isinstance(d, dict):
        bad(f"{what} must be a mapping, got {show_value(d)}")
        return {}
    for k in sorted(set(map(str, d)) - set(allowed)):
        bad(f"{what}: unknown key {k!r} (allowed: {', '.join(allowed)})")
    return d


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_spec(data: Any, path: str = "<spec>") -> TableSpec:
    """Validate a spec document; every problem found is one line of the error raised."""
    from qbench.catalog import METHODS, MODELS

    errors: list[str] = []
    bad = errors.append
    top = _check_map(data, _TOP, f"{path}", bad)
    for k, t in _TOP.items():
        if k in top and not isinstance(top[k], t):
            bad(f"{path}: {k} must be a {t.__name__}, got {show_value(top[k])}")
        elif k not in top and isinstance(data, dict):
            bad(f"{path}: missing {k!r}")
    src = _check_map(top.get("source", {}), _SOURCE, f"{path}: source", bad) if isinstance(top.get("source"), dict) else {}
    for k in ("paper", "table", "where"):
        if isinstance(top.get("source"), dict) and not (isinstance(src.get(k), str) and src[k].strip()):
            bad(f"{path}: source.{k} must cite where the numbers come from (a non-empty string)")
    proto = _check_map(top.get("protocol", {}), _PROTOCOL, f"{path}: protocol", bad) if isinstance(top.get("protocol"), dict) else {}
    for k, t in _PROTOCOL.items():
        v = proto.get(k)
        if k == "deviations" and v is None:
            continue
        if v is None or isinstance(v, bool) or not isinstance(v, t):
            bad(f"{path}: protocol.{k} must be a {getattr(t, '__name__', 'number')}, got {show_value(v)}")
    if isinstance(proto.get("model"), str) and proto["model"] not in MODELS:
        bad(f"{path}: protocol.model: {MODELS.unknown_message(proto['model'])}")
    names: list[str] = []
    for i, m in enumerate(proto.get("metrics") or []):
        m = _check_map(m, _METRIC, f"{path}: protocol.metrics[{i}]", bad)
        for k in ("metric", "column", "protocol"):
            if m and not isinstance(m.get(k), str):
                bad(f"{path}: protocol.metrics[{i}].{k} must be a string, got {show_value(m.get(k))}")
        if "decimals" in m and (isinstance(m["decimals"], bool) or not isinstance(m["decimals"], int) or not 0 <= m["decimals"] <= 6):
            bad(f"{path}: protocol.metrics[{i}].decimals (as the table prints them) must be an integer 0..6, got {show_value(m['decimals'])}")
        if isinstance(m.get("metric"), str):
            from qbench.catalog import METRICS

            if m["metric"] not in METRICS:
                bad(f"{path}: protocol.metrics[{i}]: {METRICS.unknown_message(m['metric'])}")
            names.append(m["metric"])
    rows: list[Row] = []
    for i, r in enumerate(top.get("rows") or []):
        where = f"{path}: rows[{i}]"
        r = _check_map(r, _ROW, where, bad)
        if not r:
            continue
        pub = r.get("published")
        if not isinstance(r.get("label"), str) or not r["label"].strip():
            bad(f"{where}.label must be a non-empty string")
        if not isinstance(pub, dict) or not pub:
            bad(f"{where}.published must map metric names to numbers, got {show_value(pub)}")
            pub = {}
        for k, v in pub.items():
            if k not in names:
                bad(f"{where}.published: {k!r} is not one of the table's metrics ({', '.join(names)})")
            if not _is_num(v):
                bad(f"{where}.published.{k} must be a number, got {show_value(v)}")
        method = r.get("method")
        if method is None and not isinstance(r.get("why"), str):
            bad(f"{where}: a row without a qbench method must say why (why: ...)")
        if method is not None and (not isinstance(method, str) or method not in METHODS):
            bad(f"{where}.method: {METHODS.unknown_message(method) if isinstance(method, str) else show_value(method)}")
        if not isinstance(r.get("options", {}), dict):
            bad(f"{where}.options must be a mapping of method options, got {show_value(r['options'])}")
        devs = r.get("deviations", [])
        if not isinstance(devs, list) or not all(isinstance(x, str) for x in devs):
            bad(f"{where}.deviations must be a list of strings")
            devs = []
        rows.append(Row(str(r.get("label", "")), {k: float(v) for k, v in pub.items() if _is_num(v)}, method,
                        r.get("bits"), r.get("mode"), dict(r.get("options") or {}), r.get("why"), list(devs)))
    if isinstance(data, dict) and isinstance(top.get("rows"), list) and not rows:
        bad(f"{path}: rows must hold at least one row")
    spec = None
    if not errors:
        spec = TableSpec(top["name"], top["title"], dict(src), dict(proto), rows, path)
        for row in spec.runnable:  # each cell a valid RunConfig
            try:
                cell_config(spec, row)
            except QBenchError as e:
                bad(f"{path}: row {row.label!r}: {e}")
    if len(errors) == 1:
        raise ConfigError(errors[0])
    if errors:
        raise ManyErrors([ConfigError(e) for e in errors])
    return spec


def twin_of(model: str) -> str:
    """The registered tiny twin of a real model: the model of the same family whose weights are
    built at random (``tiny_builder``). Raises :class:`ConfigError` when there is none."""
    from qbench.catalog import MODELS
    from qbench.models.loader import get_spec

    real = get_spec(model)
    for e in MODELS:
        s = get_spec(e.name)
        if s.family == real.family and getattr(s, "tiny_builder", None) and e.name != model:
            return e.name
    raise ConfigError(f"model {model!r} has no registered tiny twin (a model of family {real.family!r} with a tiny_builder)")


def cell_config(spec: TableSpec, row: Row, *, twins: bool = False, prompts: str | None = None, out_dir: str | None = None,
                fid_reference: str | None = None, batch_size: int | None = None, device: str | None = None) -> RunConfig:
    """The RunConfig of one row under the table's protocol (or its tiny-twin mapping)."""
    p = spec.protocol
    metric_options: dict[str, Any] = {}
    if fid_reference:
        metric_options["fid_reference"] = fid_reference
    d: dict[str, Any] = {
        "model": twin_of(p["model"]) if twins else p["model"], "method": row.method, "bits": row.bits, "mode": row.mode,
        "prompts": prompts or (TWIN_PROMPTS if twins else p["prompts"]), "seed": p["seed"], "steps": p["steps"],
        "guidance": p["guidance"], "resolution": None if twins else p["resolution"], "metrics": [m["metric"] for m in spec.metrics],
        "method_options": dict(row.options), "metric_options": metric_options, "tag": f"reproduce {spec.name}",
        "out_dir": out_dir or os.path.join("reports", "reproduce", spec.name + ("-twins" if twins else "")),
    }
    if twins:
        metric_options["standin"] = True
    if batch_size:
        d["batch_size"] = batch_size
    if device:
        d["device"] = device
    return RunConfig.from_dict(d)


def build_sweep(spec: TableSpec, **kw: Any):
    """The table's cells as a :class:`~qbench.sweep.Sweep` (rows with a qbench method, in order)."""
    from qbench.sweep import Sweep

    return Sweep(f"reproduce {spec.name}" + (" (tiny twins)" if kw.get("twins") else ""), [cell_config(spec, r, **kw) for r in spec.runnable], spec.path)
