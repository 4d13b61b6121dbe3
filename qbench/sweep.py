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

from qbench.config import RunConfig, show_value
from qbench.errors import ConfigError, QBenchError, RunInterrupted

_TOP = ("name", "models", "methods", "seeds", "run")
_METHOD_KEYS = ("method", "bits", "mode", "options", "tag")


@dataclass
class Sweep:
    name: str
    cells: list[RunConfig]
    source: str | None = None
    #: set by :func:`select_cell`: the index of the one cell kept, and how many the sweep has
    cell: int | None = None
    total: int | None = None


def select_cell(sweep: Sweep, i: int) -> Sweep:
    """The sweep reduced to its cell ``i`` (0-based, in :func:`expand` order: the index a SLURM
    array task passes as ``qbench sweep FILE --cell $SLURM_ARRAY_TASK_ID``). Raises
    :class:`ConfigError` when ``i`` is out of range."""
    n = len(sweep.cells)
    if not 0 <= i < n:
        raise ConfigError(f"sweep {sweep.source or sweep.name}: --cell {i} is out of range: it has {n} cell{'s' if n != 1 else ''} (0..{n - 1})")
    return Sweep(sweep.name, [sweep.cells[i]], sweep.source, cell=i, total=n)


def cell_lines(sweep: Sweep) -> list[str]:
    """One line per cell, ``<index>\t<model>\t<method> <bits>\t<seed>``, then the sbatch array range."""
    out = [f"{i}\t{c.model}\t{c.method}{' ' + c.bits if c.bits else ''}{' [' + c.tag + ']' if c.tag else ''}\tseed {c.seed}"
           for i, c in enumerate(sweep.cells)]
    return out + [f"# {len(sweep.cells)} cells: sbatch --array=0-{len(sweep.cells) - 1} tools/slurm/sweep_array.sbatch {sweep.source or ''}".rstrip()]


#: most YAML nodes a sweep file may expand to, aliases counted as often as they are used (a
#: 600-byte file of nested aliases once expanded to 5.5 GB in an error message; issue 23 §2)
MAX_YAML_NODES = 100_000
#: most cells one sweep may have
MAX_CELLS = 10_000


def _as_list(v: Any, what: str) -> list[Any]:
    if v is None:
        return []
    if isinstance(v, (str, int)) and not isinstance(v, bool):
        return [v]
    if isinstance(v, list):
        return v
    raise ConfigError(f"sweep: {what} must be a value or a list, got {show_value(v)}")


def expand(models: list[str], methods: list[dict[str, Any]], seeds: list[int], run: dict[str, Any]) -> list[RunConfig]:
    """Cells of the cross product (models x methods-with-their-bits x seeds), in that order.
    Raises :class:`ConfigError` for an empty axis, more than :data:`MAX_CELLS` cells or a bad cell."""
    if not models:
        raise ConfigError("sweep: no models")
    if not methods:
        raise ConfigError("sweep: no methods")
    n = len(models) * sum(max(1, len(m.get("bits") or [])) for m in methods) * max(1, len(seeds))
    if n > MAX_CELLS:
        raise ConfigError(f"sweep: {n} cells, more than the {MAX_CELLS} one sweep may have")
    if not isinstance(run.get("method_options", {}), dict):
        raise ConfigError(f"sweep: run.method_options must be a mapping, got {show_value(run['method_options'])}")
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
    """A ``methods:`` entry (a name, or a mapping of :data:`_METHOD_KEYS`) as a mapping."""
    if isinstance(raw, str):
        return {"method": raw}
    if not isinstance(raw, dict) or not isinstance(raw.get("method"), str):
        raise ConfigError(f"sweep: a method entry is a name or a mapping with 'method' (a name), got {show_value(raw)}")
    bad = sorted(str(k) for k in set(raw) - set(_METHOD_KEYS))
    if bad:
        raise ConfigError(f"sweep: unknown key(s) {', '.join(bad)[:200]} in method entry {raw['method']!r} (allowed: {', '.join(_METHOD_KEYS)})")
    out = dict(raw)
    bits = _as_list(raw.get("bits"), "bits")
    if not all(isinstance(b, str) for b in bits):
        raise ConfigError(f"sweep: bits of {raw['method']!r} must be bit specs such as W4A8, got {show_value(bits)}")
    out["bits"] = bits
    if raw.get("options") is not None and not isinstance(raw["options"], dict):
        raise ConfigError(f"sweep: options of {raw['method']!r} must be a mapping, got {show_value(raw['options'])}")
    return out


def _expanded_size(node, limit: int) -> int:
    """Nodes of a composed YAML document with every alias expanded where it is used (a shared node
    counts once per use), computed on the graph without expanding it; stops past ``limit``."""
    import yaml

    sizes: dict[int, int] = {}
    order, stack = [], [node]
    while stack:  # children before parents, without recursion
        n = stack.pop()
        if id(n) in sizes:
            continue
        sizes[id(n)] = -1
        order.append(n)
        if isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
        elif isinstance(n, yaml.MappingNode):
            stack.extend(x for kv in n.value for x in kv)
    for n in reversed(order):
        kids = n.value if isinstance(n, yaml.SequenceNode) else [x for kv in n.value for x in kv] if isinstance(n, yaml.MappingNode) else []
        sizes[id(n)] = min(limit + 1, 1 + sum(max(sizes[id(k)], 1) for k in kids))
    return sizes[id(node)]


def _read_yaml(path: str) -> Any:
    """The YAML document of ``path`` (a regular file, :func:`qbench.fsutil.read_text_file`), with
    alias expansion bounded by :data:`MAX_YAML_NODES` (checked on the composed graph, before
    anything is built) and safe types only."""
    import yaml

    from qbench.fsutil import read_text_file

    text = read_text_file(path, "sweep file", max_bytes=4 << 20)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, MAX_YAML_NODES) > MAX_YAML_NODES:
            raise ConfigError(f"sweep file {path}: expands to more than {MAX_YAML_NODES} values (nested YAML aliases?)")
        return loader.construct_document(node)
    except (yaml.YAMLError, RecursionError) as e:
        first = str(e).splitlines()[0] if str(e) else "nested too deeply"
        raise ConfigError(f"sweep file {path}: cannot parse: {first[:200]}") from None
    finally:
        loader.dispose()


def resolve_sweep(path: str) -> str:
    """``path`` itself, or for a bare name with no such file (``toy``, ``paper``) the sweep file
    qbench ships under that name (the repo's ``sweeps/NAME.yaml``; an installed wheel's
    ``qbench/data/sweeps``: :func:`qbench.resources.data_path`)."""
    if os.path.exists(path) or os.sep in path or "/" in path or path.endswith((".yaml", ".yml")):
        return path
    from qbench.resources import data_path

    shipped = data_path("sweeps", f"{path}.yaml")
    return shipped if os.path.isfile(shipped) else path


def load_sweep(path: str, overrides: dict[str, Any] | None = None) -> Sweep:
    """Parse and validate a sweep file (one :class:`ConfigError` line on any problem: a missing or
    non-regular file, bad YAML, a wrong type at any level, too many cells); a bare name is a
    shipped sweep (:func:`resolve_sweep`)."""
    path = resolve_sweep(path)
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"sweep file {path} must hold a mapping with {', '.join(_TOP)}")
    bad = sorted(str(k) for k in set(data) - set(_TOP))
    if bad:
        raise ConfigError(f"sweep file {path}: unknown key(s) {', '.join(bad)[:200]} (allowed: {', '.join(_TOP)})")
    raw_run = data.get("run") or {}
    if not isinstance(raw_run, dict) or not all(isinstance(k, str) for k in raw_run):
        raise ConfigError(f"sweep file {path}: 'run' must be a mapping of RunConfig fields, got {show_value(raw_run)}")
    run = dict(raw_run)
    run.update(overrides or {})
    for k in ("model", "method", "bits", "seed"):
        if k in run:
            raise ConfigError(f"sweep file {path}: {k!r} belongs in models/methods/seeds, not in run")
    try:
        models = _as_list(data.get("models"), "models")
        if not all(isinstance(m, str) for m in models):
            raise ConfigError(f"sweep: models must be model names, got {show_value(models)}")
        methods = [_method_entry(m) for m in _as_list(data.get("methods"), "methods")]
        seeds = _as_list(data.get("seeds"), "seeds")
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds):
            raise ConfigError(f"sweep: seeds must be integers, got {show_value(seeds)}")
        cells = expand(models, methods, seeds, run)
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(f"sweep file {path}") else f"sweep file {path}: {msg.removeprefix('sweep: ')}") from None
    name = data.get("name")
    return Sweep(show_value(name) if name is not None and not isinstance(name, str) else (name or os.path.splitext(os.path.basename(path))[0]), cells, path)


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
    """Run every unfinished cell; returns {"ran": [...], "skipped": [...], "failed": [...], "cells":
    [the run id of each cell, in order; None where it failed or is not run (dry run)]}.

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
    out: dict[str, list] = {"ran": [], "skipped": [], "failed": [], "cells": [None] * len(plans)}
    done_here: dict[str, str] = {}
    id_of: dict[str, str] = {}
    for i, (plan, key, prev) in enumerate(zip(plans, keys, decisions)):
        cfg = plan.cfg
        where = f"cell {sweep.cell} of {sweep.total}" if sweep.cell is not None else f"{i + 1}/{len(plans)}"
        label = f"[{where}] {cfg.model} / {plan.method.label}" + (f" seed {cfg.seed}" if cfg.seed != 42 else "")
        if prev is not None:
            say(f"{label}: finished (run {prev[-6:]}), skipped")
            out["skipped"].append(prev)
            out["cells"][i] = prev
            continue
        if key in done_here:  # a repeated cell (e.g. seeds: [42, 42]) is the same run
            say(f"{label}: same cell as an earlier one ({done_here[key]}), skipped")
            out["cells"][i] = id_of.get(key)
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
            out["cells"][i] = id_of[key] = res.run_id
        done_here[key] = f"run {res.run_id[-6:]}" if res is not None else "run on the main rank"
    return out
