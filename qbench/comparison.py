"""What ``qbench compare`` and ``qbench report`` put side by side, and what they refuse to pair.

* A **row** is one configuration: the method's resolved description (method, bits, mode, options:
  ``result["method"]``), the run's tag and the set of metrics it measured, under one set of
  sampling settings. It shows the latest finished run of that configuration (or, with ``--runs``,
  each named run).
* Rows are **grouped** by the settings two runs must share for their numbers to be compared
  (``result["sampling"]``, written by :func:`qbench.generation.comparability`): model and weights,
  prompts (spec, count and a hash of ids and texts), seed, steps, guidance, resolution, dtype,
  device type and batch size. Each group is its own table; every group after the first says in
  one line how its settings differ from the first.
* Each group's **baseline** is its ``fp`` run (or what ``--baseline`` names): among several, the
  one with the most per-prompt scores, then an untagged one, then the latest. A group without one
  says why (which settings differ from the nearest baseline) and gets no paired differences.
* **Paired differences** (row - baseline, prompt by prompt: mean, standard error, n;
  :func:`qbench.metrics.stats.paired_difference`) only inside a group whose settings were all
  recorded; runs stored before the settings were kept are shown, flagged and never paired.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from qbench.config import stable_hash
from qbench.errors import QBenchError

#: the settings that make two runs comparable, in display order
SETTINGS = ("model", "weights", "prompts", "n_prompts", "prompts_sha", "seed", "steps", "guidance", "resolution", "dtype", "device_type", "batch_size")

PerImage = Callable[[str], dict[str, dict[str, float]]]


def run_settings(run: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """``(settings, complete)`` of a stored run: ``result["sampling"]``, or for a run stored before
    it was kept, what its config tells (model defaults unresolved: None) and ``complete=False``."""
    res = run.get("result") or {}
    if res.get("sampling"):
        return {k: res["sampling"].get(k) for k in SETTINGS}, True
    cfg = run.get("config") or {}
    s = {k: None for k in SETTINGS}
    s.update(model=run.get("model"), weights=res.get("model_source"), prompts=cfg.get("prompts"), n_prompts=res.get("n_images"),
             seed=cfg.get("seed"), steps=cfg.get("steps"), guidance=cfg.get("guidance"), resolution=cfg.get("resolution"),
             dtype=(res.get("provenance") or {}).get("dtype"), batch_size=cfg.get("batch_size"))
    return s, False


def _top_metrics(run: dict[str, Any]) -> list[str]:
    """The run's own measured metrics (not sub-values, not the vote ratings qbench.arena adds)."""
    return sorted(n for n in run.get("metrics", {}) if "/" not in n and n != "arena" and not n.startswith("judge-"))


def config_key(run: dict[str, Any]) -> str:
    """Identity of a run's configuration: method description, tag and measured metrics."""
    res = run.get("result") or {}
    desc = res.get("method") or {"method": run.get("method"), "bits": run.get("bits"), "mode": run.get("mode")}
    return stable_hash({"method": desc, "tag": (run.get("config") or {}).get("tag"), "metrics": _top_metrics(run)})


def make_row(run: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one finished run, as ``compare`` shows them (JSON-serialisable)."""
    res = run.get("result") or {}
    lat = res.get("latency") or {}
    mem = res.get("memory") or {}
    size = res.get("size") or {}
    settings, complete = run_settings(run)
    kind = size.get("deploy_kind")
    return {
        "run_id": run["id"],
        "label": run["label"],
        "method": run["method"],
        "bits": run.get("bits"),
        # parameter-weighted mean bits of the denoiser's layers (a mixed map's W3.97A8)
        "effective_bits": ((res.get("effective_bits") or {}).get("effective") or {}).get("label"),
        "mode": run.get("mode"),
        "tag": (run.get("config") or {}).get("tag"),
        "method_config": res.get("method") or {},
        "config_key": config_key(run),
        "weights": res.get("model_source"),
        "metrics": run.get("metrics", {}),
        "latency_s": (lat.get("end_to_end_s") or {}).get("median"),
        "step_s": (lat.get("per_step_s") or {}).get("median"),
        "latency_kind": lat.get("kind"),
        "peak_bytes": mem.get("peak_bytes"),
        "memory_kind": mem.get("kind"),
        # deployable bytes and the ratio to the 16-bit model; runs stored before sizes were kept
        # have only the resident bytes of the denoiser (an fp32 CPU size: no ratio is made of it)
        "size_bytes": size.get("deploy_bytes", res.get("model_bytes")),
        "size_vs_16bit": size.get("deploy_vs_16bit"),
        "size_kind": kind or ("resident bytes of the denoiser (run stored before deployable sizes were kept)" if res.get("model_bytes") else None),
        "size_simulated": bool(kind and str(kind).startswith("simulated")),
        "n_images": res.get("n_images"),
        "device": (res.get("provenance") or {}).get("device_name"),
        "date": run.get("created"),
        "notes": res.get("notes", []),
        "sampling": settings,
        "sampling_complete": complete,
        # the flags the run was given for those settings (None: the model's default)
        "run_settings": {k: (run.get("config") or {}).get(k) for k, _ in _SETTING_FLAGS},
    }


def select_runs(runs: list[dict[str, Any]], keep_all: bool = False, pin: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """The latest run of every (configuration, settings) pair, in creation order, and how many older
    runs that hides; ``pin``: this run id stands for its pair even if a later one exists;
    ``keep_all``: every run (the runs named with ``--runs``)."""
    if keep_all:
        return list(runs), 0
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for r in sorted(runs, key=lambda r: (r["id"] == pin, r["created"], r["id"])):  # the pinned run last: it wins
        latest[(config_key(r), stable_hash(run_settings(r)))] = r
    kept = sorted(latest.values(), key=lambda r: (r["created"], r["id"]))
    return kept, len(runs) - len(kept)


def settings_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """How settings ``a`` differ from ``b``: phrases like ``steps 1 vs 4`` (prompts with their counts;
    the same prompt spec with other ids or texts says so)."""
    out = []
    for k in SETTINGS:
        if k in ("n_prompts", "prompts_sha"):
            continue
        if k == "prompts":
            pa, pb = f"{a['prompts']} ({a['n_prompts']} prompts)", f"{b['prompts']} ({b['n_prompts']} prompts)"
            if pa != pb:
                out.append(f"prompts {pa} vs {pb}")
            elif a["prompts_sha"] != b["prompts_sha"]:
                out.append("prompt ids or texts differ (same spec: the prompt file changed)" if a["prompts_sha"] and b["prompts_sha"] else "prompt texts not recorded")
        elif a[k] != b[k]:
            out.append(f"{k.replace('_', ' ')} {_v(a[k])} vs {_v(b[k])}")
    return out


def _v(x: Any) -> str:
    return "?" if x is None else str(x)


#: RunConfig fields that set what ``SETTINGS`` records, with their flags
_SETTING_FLAGS = (("prompts", "--prompts"), ("seed", "--seed"), ("steps", "--steps"), ("guidance", "--guidance"), ("resolution", "--resolution"),
                  ("batch_size", "--batch-size"), ("dtype", "--dtype"), ("device", "--device"), ("model_path", "--model-path"),
                  # not settings, but a pasted hint needs them: the same store and the same metrics to pair on
                  ("out_dir", "--out-dir"), ("db", "--db"), ("metrics", "--metrics"))


def rerun_hint(row: dict[str, Any], method: str) -> str:
    """The ``qbench run`` command that makes a ``method`` run with the settings of ``row``: the
    flags its own run was given, its --out-dir/--db and --metrics included (fields left at their
    RunConfig default are left out); shell-quoted, so that it pastes."""
    import shlex

    from qbench.config import RunConfig

    defaults = RunConfig.__dataclass_fields__
    parts = ["qbench", "run", "--model", str(row["sampling"]["model"]), "--method", method]
    for k, flag in _SETTING_FLAGS:
        v = row["run_settings"].get(k)
        if v is not None and v != defaults[k].default:
            parts += [flag, ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)]
    return " ".join(shlex.quote(p) for p in parts)


def compare_hint(cfg) -> str:
    """The ``qbench compare`` command for ``cfg``'s runs: its model, store (--out-dir, --db) and
    metrics; shell-quoted, so that it pastes."""
    import shlex

    parts = ["qbench", "compare", "--model", cfg.model]
    if cfg.out_dir != "reports":
        parts += ["--out-dir", cfg.out_dir]
    if cfg.db:
        parts += ["--db", cfg.db]
    if cfg.metrics:
        parts += ["--metrics", ",".join(cfg.metrics)]
    return " ".join(shlex.quote(str(p)) for p in parts)


def _pick(cands: list[dict[str, Any]], per_image: PerImage) -> dict[str, Any] | None:
    """Among baseline candidates: most per-prompt metrics, then untagged, then latest."""
    if not cands:
        return None
    return max(cands, key=lambda r: (len(per_image(r["run_id"])), r["tag"] in (None, ""), r["date"] or "", r["run_id"]))


def matches(row: dict[str, Any], name: str) -> bool:
    """Whether ``name`` names this row's configuration: its method, label or short label, its tag,
    or the label followed by ``tag <tag>``."""
    n = " ".join(name.strip().lower().split())
    names = {row["method"].lower(), row["label"].lower(), short_label(row).lower()}
    if row.get("tag"):
        t = str(row["tag"]).lower()
        names |= {t} | {f"{x} tag {t}" for x in list(names)}
    return n in names


def short_label(row: dict[str, Any]) -> str:
    """``naive W4A8 sim`` for ``naive W4A8 simulate`` (the stored label, mode shortened)."""
    return " ".join("sim" if w == "simulate" else w for w in row["label"].split())


def pair(rows: list[dict[str, Any]], base: dict[str, Any], per_image: PerImage) -> None:
    """Give every row but ``base`` ``paired``: metric -> {mean, se, n} of (row - base) over the
    prompts both scored, or ``paired_note`` saying why not. Metrics that already compare with the
    full-precision images (psnr, ssim, lpips: details.reference) are not paired again."""
    from qbench.metrics.stats import paired_difference

    base_scores = per_image(base["run_id"])
    for r in rows:
        if r is base:
            continue
        mine = per_image(r["run_id"])
        paired = {}
        for name, scores in mine.items():
            ref = str(r["metrics"].get(name, {}).get("details", {}).get("reference", ""))
            if name in base_scores and not ref.startswith("full-precision"):
                d = paired_difference(base_scores[name], scores)
                if d is not None:
                    paired[name] = d
        if paired:
            r["paired"] = paired
        elif not base_scores:
            r["paired_note"] = "not paired: the baseline kept no per-prompt scores"
        elif not mine:
            r["paired_note"] = "not paired: this run kept no per-prompt scores"
        else:
            fidelity = sorted(n for n in mine if str(r["metrics"].get(n, {}).get("details", {}).get("reference", "")).startswith("full-precision"))
            others = sorted(set(mine) - set(fidelity))
            r["paired_note"] = ("not paired: " + "; ".join(filter(None, [
                f"{', '.join(fidelity)} already compare{'s' if len(fidelity) == 1 else ''} with the full-precision images" if fidelity else "",
                f"the baseline has no per-prompt {', '.join(others)}" if others else ""])))


def compare(runs: list[dict[str, Any]], per_image: PerImage, baseline: str | None = None, baseline_run: str | None = None,
            keep_all: bool = False, selected: bool = False) -> tuple[list[dict[str, Any]], int]:
    """Rows of finished ``runs`` of one model, grouped, with baselines and paired differences.

    ``baseline``: a method name or label (``fp`` by default) that is each group's baseline;
    ``baseline_run``: a run id that is the baseline of its group (the other groups get none).
    Returns ``(rows, n_hidden)``: rows in display order, each with ``group`` (0, 1, ...),
    ``is_baseline``, ``baseline_run`` (its group's baseline id or None), ``group_note`` (one line:
    why the group has no baseline, or how its settings differ from group 0's) and ``paired`` or
    ``paired_note``; ``n_hidden``: older runs of a shown configuration.
    """
    chosen, hidden = select_runs(runs, keep_all, pin=baseline_run)
    rows = [make_row(r) for r in chosen]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(stable_hash([r["sampling"], r["sampling_complete"]]), []).append(r)
    name = baseline or "fp"
    out = []
    for members in groups.values():
        if baseline_run:
            base = next((r for r in members if r["run_id"] == baseline_run), None)
        else:
            cands = [r for r in members if matches(r, name)]
            if baseline and len({r["config_key"] for r in cands}) > 1:
                labels = sorted({short_label(r) + (f" tag {r['tag']}" if r.get("tag") else "") for r in cands})
                raise QBenchError(f"--baseline {baseline!r} names {len(labels)} configurations with the same settings ({', '.join(labels)}); "
                                  "name one of them (its label, or a run id)")
            base = _pick(cands, per_image) if members[0]["sampling_complete"] else None
        out.append((members, base))
    if baseline_run and not any(b for _, b in out):
        raise QBenchError(f"baseline run {baseline_run} is not among the runs compared")

    def order(g):
        members, base = g
        return (base is not None and base["run_id"] == baseline_run, base is not None, len(members), max(r["date"] or "" for r in members))

    out.sort(key=order, reverse=True)
    first_base = next((b for _, b in out if b is not None), None)
    ordered: list[dict[str, Any]] = []
    for gi, (members, base) in enumerate(out):
        members.sort(key=lambda r: (r is not base, r["method"] != "fp", r["method"], -_bits_w(r["bits"]), r["date"] or ""))
        note = _group_note(gi, members, base, first_base, out[0][0][0]["sampling"], name, bool(baseline_run), selected)
        for r in members:
            r.update(group=gi, is_baseline=r is base, baseline_run=base["run_id"] if base else None, group_note=note)
        if base is not None:
            pair(members, base, per_image)
        ordered += members
    _distinguish(ordered)
    return ordered, hidden


def _group_note(gi: int, members, base, first_base, first_settings, name: str, explicit_run: bool, selected: bool = False) -> str | None:
    s = members[0]["sampling"]
    if not members[0]["sampling_complete"]:
        unknown = [k for k in SETTINGS if s[k] is None]
        return ("settings not recorded (runs stored by an older qbench; unknown: " + ", ".join(unknown) + "): shown, never paired")
    if base is None:
        if selected:  # --runs: the store may hold a baseline the selection left out
            return f"no baseline: no {name} run with these settings among the selected runs (add one to --runs, or --baseline RUN)"
        # a command that makes the missing baseline, where the baseline is a plain method name
        hint = "" if explicit_run or " " in name else f"; `{rerun_hint(members[0], name)}` makes one"
        if first_base is None:
            return f"no baseline: no {name} run with these settings{hint}"
        diff = "; ".join(settings_diff(s, first_base["sampling"])) or "same settings"
        return f"no baseline: the baseline {short_label(first_base)} {first_base['run_id'][-6:]} has other settings ({diff}); not paired{hint}"
    if gi == 0:
        return None
    return "settings differ from the first table: " + ("; ".join(settings_diff(s, first_settings)) or "same settings")


def _distinguish(rows: list[dict[str, Any]]) -> None:
    """Give each row ``options_diff``: the options (flattened ``key=value``) in which it differs from
    other rows with the same label, so that two configurations never look the same."""
    flat = {id(r): _flatten({k: v for k, v in r["method_config"].items() if k not in ("method", "bits", "mode", "options")}) | _flatten(r["method_config"].get("options") or {})
            for r in rows}
    by_label: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    for same in by_label.values():
        keys = sorted({k for r in same for k in flat[id(r)]})
        varying = [k for k in keys if len({repr(flat[id(r)].get(k)) for r in same}) > 1]
        for r in same:
            r["options_diff"] = " ".join(f"{k}={_short(flat[id(r)].get(k))}" for k in varying if not k.endswith("_hash"))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _short(v: Any, limit: int = 24) -> str:
    """An option value for a label: a list of numbers (e.g. scheduler coefficients) as
    ``(0.921, 0.803)``, 3 significant digits, at most 4 shown (``(1, 2, 3, … 9 values)``): never
    cut inside a number; anything else cut at ``limit`` characters with an ellipsis."""
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        nums = [f"{x:.3g}" for x in v]
        return "(" + ", ".join(nums if len(nums) <= 4 else nums[:3] + [f"… {len(nums)} values"]) + ")"
    s = "-" if v is None else str(v)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _bits_w(bits: str | None) -> int:
    if not bits:
        return 99
    try:
        return int(bits.upper().split("A")[0].lstrip("W"))
    except ValueError:
        return 0


def status_counts(all_runs: list[dict[str, Any]]) -> dict[str, int]:
    """How many stored runs are not finished, by (derived) status: running, stale, interrupted, failed."""
    return dict(Counter(r["status"] for r in all_runs if r["status"] != "done"))
