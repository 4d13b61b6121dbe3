"""Sweeps: the cross product of models x methods x bit widths x seeds (x options) in one command.

A sweep file (YAML)::

    name: toy                      # a label for the report
    models: [toy-flux, toy-lcm]
    methods:                       # a name, or a mapping with its bit widths and options
      - fp
      - {method: naive, bits: [W8A8, W4A8]}
      - {method: qsched, bits: [W4A8], options: {base: naive}}
    seeds: [42]                    # optional (default: RunConfig's)
    run:                           # any other RunConfig field, shared by every cell
      prompts: toy:64
      metrics: [toy-acc, jaq, psnr]

Each cell is one :class:`~qbench.config.RunConfig`, validated (all of them) before the first cell
runs. A cell is **finished** when the results store holds a ``done`` run whose identity key
(:func:`qbench.phases.run_identity`) equals the key the cell's inputs give now: the same
configuration, prompt texts, weights content, files its options name, code and library versions.
Finished cells are skipped, so a killed sweep resumes where it stopped (and an interrupted cell
resumes from its cached images); an edited prompt file, a changed weights folder or a library
upgrade makes the cell run again. ``qbench run`` builds the same cross product from comma-separated or repeated
``--model`` / ``--method`` / ``--bits`` / ``--seed``.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any

from qbench.config import RunConfig
from qbench.errors import ConfigError, QBenchError, RunInterrupted

_TOP = ("name", "models", "methods", "seeds", "run")
_METHOD_KEYS = ("method", "bits", "mode", "options", "tag")


@dataclass
class Sweep:
    name: str
    cells: list[RunConfig]
    source: str | None = None


def _as_list(v: Any, what: str) -> list[Any]:
    if v is None:
        return []
    if isinstance(v, (str, int)):
        return [v]
    if isinstance(v, list):
        return v
    raise ConfigError(f"sweep: {what} must be a value or a list, got {v!r}")


def expand(models: list[str], methods: list[dict[str, Any]], seeds: list[int], run: dict[str, Any]) -> list[RunConfig]:
    """Cells of the cross product (models x methods-with-their-bits x seeds), in that order."""
    if not models:
        raise ConfigError("sweep: no models")
    if not methods:
        raise ConfigError("sweep: no methods")
    cells: list[RunConfig] = []
    for model, m, seed in itertools.product(models, methods, seeds or [None]):
        for bits in m.get("bits") or [None]:
            d = dict(run)
            d.update(model=model, method=m["method"], bits=bits)
            for k in ("mode", "tag"):
                if m.get(k) is not None:
                    d[k] = m[k]
            if m.get("options"):
                d["method_options"] = {**d.get("method_options", {}), **m["options"]}
            if seed is not None:
                d["seed"] = seed
            cells.append(RunConfig.from_dict(d))
    return cells


def _method_entry(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str):
        return {"method": raw}
    if not isinstance(raw, dict) or "method" not in raw:
        raise ConfigError(f"sweep: a method entry is a name or a mapping with 'method', got {raw!r}")
    bad = sorted(set(raw) - set(_METHOD_KEYS))
    if bad:
        raise ConfigError(f"sweep: unknown key(s) {', '.join(bad)} in method entry {raw['method']!r} (allowed: {', '.join(_METHOD_KEYS)})")
    out = dict(raw)
    out["bits"] = [str(b) for b in _as_list(raw.get("bits"), "bits")]
    if raw.get("options") is not None and not isinstance(raw["options"], dict):
        raise ConfigError(f"sweep: options of {raw['method']!r} must be a mapping")
    return out


def load_sweep(path: str, overrides: dict[str, Any] | None = None) -> Sweep:
    """Parse and validate a sweep file (one :class:`ConfigError` line on any problem)."""
    import yaml

    if not os.path.isfile(path):
        raise QBenchError(f"sweep file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"sweep file {path}: cannot parse: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"sweep file {path} must hold a mapping with {', '.join(_TOP)}")
    bad = sorted(set(data) - set(_TOP))
    if bad:
        raise ConfigError(f"sweep file {path}: unknown key(s) {', '.join(bad)} (allowed: {', '.join(_TOP)})")
    run = dict(data.get("run") or {})
    if not isinstance(run, dict):
        raise ConfigError(f"sweep file {path}: 'run' must be a mapping of RunConfig fields")
    run.update(overrides or {})
    for k in ("model", "method", "bits", "seed"):
        if k in run:
            raise ConfigError(f"sweep file {path}: {k!r} belongs in models/methods/seeds, not in run")
    models = [str(m) for m in _as_list(data.get("models"), "models")]
    methods = [_method_entry(m) for m in _as_list(data.get("methods"), "methods")]
    seeds = [int(s) for s in _as_list(data.get("seeds"), "seeds")]
    try:
        cells = expand(models, methods, seeds, run)
    except ConfigError as e:
        raise ConfigError(f"sweep file {path}: {e}") from None
    return Sweep(str(data.get("name") or os.path.splitext(os.path.basename(path))[0]), cells, path)


def split_values(values: list[str] | None) -> list[str]:
    """``--bits W4A8,W8A8 --bits W2A8`` -> ``[W4A8, W8A8, W2A8]`` (order kept, duplicates dropped)."""
    out: list[str] = []
    for v in values or []:
        for part in str(v).split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


def finished(key: str, done_runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The latest stored ``done`` run whose identity key is ``key`` (:func:`qbench.phases.run_identity`:
    same configuration, prompt texts, weights content, files named by options, code and library
    versions), if any."""
    for r in reversed(done_runs):
        if ((r.get("result") or {}).get("identity") or {}).get("key") == key:
            return r
    return None


def run_sweep(sweep: Sweep, *, show_progress: bool = True, say=print, dry_run: bool = False) -> dict[str, Any]:
    """Run every unfinished cell; returns {"ran": [...], "skipped": [...], "failed": [...]}.

    A cell is finished when the store holds a ``done`` run under the key its inputs give now
    (:func:`finished`). With several ranks, the main rank decides which cells run (from its store)
    and tells the others; a cell that fails on any rank fails on every rank (``qbench.dist``) and
    the sweep goes on; only the main rank prints."""
    from qbench import harness
    from qbench.dist import current
    from qbench.phases import run_identity
    from qbench.preflight import plan_run
    from qbench.store import Store

    dist = current(sweep.cells[0].device if sweep.cells else "auto")
    say = say if dist.is_main else (lambda msg: None)
    plans = []
    problems = []
    for i, cfg in enumerate(sweep.cells):  # every cell checked before the first one runs
        try:
            plans.append(plan_run(cfg))
        except QBenchError as e:
            problems.append(f"cell {i + 1} ({cfg.model} / {cfg.method} {cfg.bits or ''}): {e}")
    if problems:
        raise QBenchError(f"{len(problems)} of {len(sweep.cells)} sweep cells cannot run:\n" + "\n".join(f"  - {p}" for p in problems))
    keys = [run_identity(plan).key for plan in plans]
    decisions: list[str | None] | None = None
    if dist.is_main:  # the main rank decides from its store; the others follow
        decisions = []
        for plan, key in zip(plans, keys):
            db = plan.cfg.db_path
            done = Store(db, create=False).runs(model=plan.cfg.model) if os.path.exists(db) else []
            prev = finished(key, done)
            decisions.append(prev["id"] if prev is not None else None)
    decisions = dist.broadcast(decisions)
    out: dict[str, list[str]] = {"ran": [], "skipped": [], "failed": []}
    done_here: dict[str, str] = {}
    for i, (plan, key, prev) in enumerate(zip(plans, keys, decisions)):
        cfg = plan.cfg
        label = f"[{i + 1}/{len(plans)}] {cfg.model} / {plan.method.label}" + (f" seed {cfg.seed}" if cfg.seed != 42 else "")
        if prev is not None:
            say(f"{label}: finished (run {prev[-6:]}), skipped")
            out["skipped"].append(prev)
            continue
        if key in done_here:  # a repeated cell (e.g. seeds: [42, 42]) is the same run
            say(f"{label}: same cell as an earlier one ({done_here[key]}), skipped")
            continue
        if dry_run:
            say(f"{label}: to run ({len(plan.prompts)} prompts)")
            continue
        say(f"{label}: running")
        try:
            res = harness.run(cfg, show_progress=show_progress, log=lambda m: say(f"  {m}"), plan=plan)
        except RunInterrupted:
            raise
        except QBenchError as e:  # one cell failing (NaN output, another rank failing, ...) does not stop the others
            say(f"{label}: FAILED: {e}")
            out["failed"].append(f"{cfg.model} / {plan.method.label}: {e}")
            done_here[key] = "failed above"
            continue
        if res is not None:  # None on the non-main ranks of a sharded run
            out["ran"].append(res.run_id)
        done_here[key] = f"run {res.run_id[-6:]}" if res is not None else "run on the main rank"
    return out
