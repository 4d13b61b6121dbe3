"""``qbench report``: per model, a Markdown report and a self-contained HTML page.

For each model with finished runs, :func:`build` gathers (from the store only; nothing is run):

* the comparison tables of :mod:`qbench.comparison` (the same rows, groups of comparable settings,
  baselines and paired differences as ``qbench compare``), the best value of each column marked
  (reference metrics such as PSNR to FP leave the full-precision row out; latency only among
  deployment latencies), paired differences as ``mean ± se`` with ``~`` where
  ``|mean| < 2 se`` (unresolved);
* optional extra pairings (``--vs METHOD``): every configuration against METHOD's configuration
  with the same bits and mode, prompt by prompt (:func:`qbench.comparison.pair`);
* provenance: prompt set, n, seeds, steps, guidance, resolution, dtype, batch, device, threads,
  package versions, git, run dates, modes, calibration prompts, latency and memory protocol;
* figures (:mod:`qbench.plots`) and an image grid with difference maps (:mod:`qbench.grids`).

:func:`write_report` writes ``report-<model>.md`` (figures as PNG files beside it) and
``report-<model>.html`` (everything embedded; :mod:`qbench.report_html`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from qbench.comparison import compare, matches, pair, short_label
from qbench.compare_table import DETAIL_KEYS, fmt_se, settings_line
from qbench.errors import QBenchError
from qbench.report_best import LEGEND, best_exact, best_latency, best_rows, higher_is_better
from qbench.report_figures import Figure, _clip, figures, grid, top_metrics
from qbench.safetext import md
from qbench.store import Store, utcnow
from qbench.tables import MIB, fmt_rating, meaningless

GRID_PROMPTS = 6
CELL = 128
FORMATS = ("md", "html")


@dataclass
class Cell:
    text: str
    best: bool = False
    unresolved: bool = False
    sub: str = ""  # a second line (HTML): the paired difference under a metric's value


@dataclass
class Table:
    title: str
    head: list[str]
    body: list[list[Cell]]
    note: str = ""


@dataclass
class Report:
    model: str
    generated: str
    groups: list[dict[str, Any]] = field(default_factory=list)  # settings, note, table, paired, row_notes
    extra: list[Table] = field(default_factory=list)
    provenance: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    grid: Figure | None = None


# -- tables -------------------------------------------------------------------------------------------
def _hib(rows, name) -> bool:
    return higher_is_better(rows, name)


def delta_cell(d: dict[str, Any] | None) -> Cell:
    if d is None:
        return Cell("-")
    unresolved = d["se"] is not None and d["se"] > 0 and abs(d["mean"]) < 2 * d["se"]
    return Cell(fmt_se(d["mean"], d["se"], signed=True) + (" ~" if unresolved else ""), unresolved=unresolved)


def _label(r: dict[str, Any]) -> str:
    """Label, the options that tell it from same-named rows (cut at 72 characters) and the tag."""
    extra = [x for x in (_clip(r.get("options_diff") or ""), f"tag {r['tag']}" if r.get("tag") else None) if x]
    return short_label(r) + (" (baseline)" if r.get("is_baseline") else "") + (f" [{'; '.join(extra)}]" if extra else "")


def main_table(rows: list[dict[str, Any]], title: str, per_image=None, latency: dict[str, dict[str, Any]] | None = None) -> Table:
    """One table's configurations: every top-level metric (mean ± standard error, its paired
    difference to the baseline as the cell's second line), latency, peak memory and size; the
    best of a column marked only where it is resolved (:mod:`qbench.report_best`). ``latency``:
    run id -> the stored ``result["latency"]`` (timing ranges)."""
    names = top_metrics(rows)
    best = {n: best_rows(rows, n, per_image) for n in names}
    deploy = lambda r: not str(r.get("latency_kind") or "").startswith("simulate")
    lat = latency or {}
    b_lat = best_latency(rows, {k: v.get("end_to_end_s") or {} for k, v in lat.items()}, "latency_s", deploy)
    b_step = best_latency(rows, {k: v.get("per_step_s") or {} for k, v in lat.items()}, "step_s", deploy)
    b_peak, b_size = best_exact(rows, "peak_bytes"), best_exact(rows, "size_bytes")
    head = ["configuration", "run"] + [f"{n} {'↑' if _hib(rows, n) else '↓'}" for n in names] + [
        "latency s ↓", "step s ↓", "peak MiB ↓", "size MiB ↓", "× 16-bit ↓"]
    body = []
    for r in rows:
        cells = [Cell(_label(r)), Cell(r["run_id"][-6:])]
        for n in names:
            m = r["metrics"].get(n)
            if not m or m.get("value") is None:
                cells.append(Cell("-"))
                continue
            c = Cell((fmt_rating(m) or fmt_se(m["value"], m.get("stderr"))) + (" †" if meaningless(m) else ""), best=r["run_id"] in best[n])
            if r.get("is_baseline"):
                c.sub = "baseline"
            elif n in (r.get("paired") or {}):
                d = delta_cell(r["paired"][n])
                c.sub, c.unresolved = "Δ " + d.text, d.unresolved
            cells.append(c)
        rid = r["run_id"]
        cells += [
            Cell("-" if r["latency_s"] is None else f"{r['latency_s']:.3f}", best=rid in b_lat),
            Cell("-" if r["step_s"] is None else f"{r['step_s']:.4f}", best=rid in b_step),
            Cell("-" if not r["peak_bytes"] else f"{r['peak_bytes'] / MIB:.1f}", best=rid in b_peak),
            Cell("-" if not r["size_bytes"] else f"{r['size_bytes'] / MIB:.2f}" + (" *" if r["size_simulated"] else ""), best=rid in b_size),
            Cell("-" if not r["size_vs_16bit"] else f"{r['size_vs_16bit']:.3f}", best=rid in b_size),
        ]
        body.append(cells)
    return Table(title, head, body)


def paired_table(rows: list[dict[str, Any]], title: str, note: str = "") -> Table | None:
    """The rows' paired differences (``row["paired"]``) as a table, or None when none has any."""
    prs = [r for r in rows if r.get("paired")]
    if not prs:
        return None
    names = [n for n in top_metrics(rows) if any(n in r["paired"] for r in prs)]
    head = ["configuration", "run", "n"] + [f"Δ {n}" for n in names]
    body = [[Cell(_label(r)), Cell(r["run_id"][-6:]), Cell(str(max(d["n"] for d in r["paired"].values())))]
            + [delta_cell(r["paired"].get(n)) for n in names] for r in prs]
    return Table(title, head, body, note)


def vs_method(rows: list[dict[str, Any]], method: str, per_image) -> list[dict[str, Any]]:
    """Copies of ``rows`` paired against ``method``'s row with the same bits and mode (rows that
    have one, other than it)."""
    out = []
    for r in rows:
        base = next((b for b in rows if b is not r and matches(b, method) and b.get("bits") == r.get("bits") and b.get("mode") == r.get("mode")), None)
        if base is None or matches(r, method):
            continue
        rc = {k: v for k, v in r.items() if k not in ("paired", "paired_note")}
        rc["is_baseline"] = False
        pair([base, rc], base, per_image)
        rc["options_diff"] = f"vs {short_label(base)} {base['run_id'][-6:]}"
        out.append(rc)
    return out


# -- provenance -----------------------------------------------------------------------------------------
def _join(values) -> str:
    vals = [str(v) for v in dict.fromkeys(values) if v not in (None, "")]
    return "; ".join(vals) if vals else "-"


def provenance(rows: list[dict[str, Any]], by_id: dict[str, dict[str, Any]], generated: str) -> list[tuple[str, str]]:
    """``(what, how)`` lines of where the report's numbers come from; a setting that differs
    between runs lists each value once (``a; b``)."""
    res = {r["run_id"]: by_id[r["run_id"]]["result"] for r in rows}
    prov = {k: v.get("provenance") or {} for k, v in res.items()}
    samp = [r["sampling"] for r in rows]
    seeds = _join(f"{s['seed']} + prompt index (the prompt's position in its set; {s['seed']} .. {s['seed'] + s['n_prompts'] - 1} "
                  f"for the first {s['n_prompts']} prompts)" if isinstance(s.get("seed"), int) and isinstance(s.get("n_prompts"), int)
                  else s.get("seed") for s in samp)
    versions = {}
    for p in prov.values():
        for k, v in (p.get("versions") or {}).items():
            versions.setdefault(k, set()).add(str(v))
    lat = [(by_id[r["run_id"]]["result"].get("latency") or {}) for r in rows]
    out = [
        ("prompt set", _join(f"{s.get('prompts')} ({s.get('n_prompts')} prompts, ids+texts sha {s.get('prompts_sha')})" for s in samp)),
        ("seeds", seeds),
        ("steps / guidance / resolution", _join(f"{s.get('steps')} steps, guidance {s.get('guidance')}, {s.get('resolution')} px" for s in samp)),
        ("dtype / batch size", _join(f"{s.get('dtype')}, batch {s.get('batch_size')}" for s in samp)),
        ("weights", _join(s.get("weights") for s in samp)),
        ("device", _join(f"{p.get('device_name')} ({p.get('device')}, torch threads {p.get('torch_threads')})" for p in prov.values())),
        ("platform / python", _join(f"{p.get('platform')}, python {p.get('python')}" for p in prov.values())),
        ("versions", ", ".join(f"{k} {'/'.join(sorted(v))}" for k, v in sorted(versions.items())) or "-"),
        ("git", _join(p.get("git") for p in prov.values())),
        ("run dates", f"{min(r['date'] or '' for r in rows)} .. {max(r['date'] or '' for r in rows)} (report generated {generated})"),
        ("modes", "; ".join(f"{short_label(r)}: {r.get('mode')}" for r in rows)),
        ("latency", _join(f"batch 1, {x.get('warmup')} warm-up + {x.get('repeats')} timed runs, median" for x in lat if x.get("end_to_end_s"))),
        ("memory", _join(r.get("memory_kind") for r in rows)),
        ("size", "deployable bytes of the denoiser (* computed for the packed format: simulate mode keeps float weights); "
                 "× 16-bit: ratio to the same model at 16 bits"),
    ]
    calib = [(short_label(r), (res[r["run_id"]].get("calibration") or {}).get("prompts")) for r in rows]
    if any(c for _, c in calib):
        out.append(("calibration prompts", "; ".join(f"{lab}: {c}" for lab, c in calib if c)))
    for n in top_metrics(rows):
        d = next(r["metrics"][n].get("details") or {} for r in rows if n in r["metrics"])
        info = ", ".join(f"{k}={v}" for k, v in d.items() if k in DETAIL_KEYS)
        if info:
            out.append((f"metric {n}", info))
    return out


# -- building -------------------------------------------------------------------------------------------
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def build(store: Store, model: str, *, baseline: str | None = None, vs: str | None = None, grid_prompts: int = GRID_PROMPTS,
          diff: bool = True, plots: bool = True, runs: list[str] | None = None) -> Report:
    """The report of one model's finished runs (QBenchError when it has none); ``runs``: only these
    run ids (each shown, as ``qbench compare --runs``), else the latest run of every configuration."""
    from qbench.arena import with_ratings

    selected = with_ratings(store, [r for r in store.runs(model=model) if runs is None or r["id"] in runs])
    if not selected:
        raise QBenchError(f"no finished runs for model {model!r}{' among the runs named' if runs else ''} in {store.path}")
    rows, hidden = compare(selected, store.per_image, baseline=baseline, keep_all=runs is not None)
    by_id = {r["id"]: r for r in selected}
    rep = Report(model=model, generated=utcnow())
    n_groups = rows[-1]["group"] + 1
    for g in range(n_groups):
        grows = [r for r in rows if r["group"] == g]
        prefix = f"Table {g + 1}: " if n_groups > 1 else ""
        rep.groups.append({
            "settings": prefix + settings_line(grows[0]), "note": grows[0].get("group_note") or "", "table": main_table(grows, "Comparison", store.per_image,
                                                                                                   {r["run_id"]: by_id[r["run_id"]]["result"].get("latency") or {} for r in grows}),
            "paired": paired_table(grows, "Paired differences to the baseline",
                                   "this configuration − the baseline, prompt by prompt on the same prompts and seeds: mean ± standard error "
                                   "over prompts (n prompts); ~ = within two standard errors of zero (not resolved)"),
            "row_notes": [f"{short_label(r)} {r['run_id'][-6:]}: {r['paired_note']}" for r in grows if r.get("paired_note")],
        })
        if vs:
            t = paired_table(vs_method(grows, vs, store.per_image), f"{prefix}Paired differences to {vs} at the same bits and mode",
                             f"this configuration − {vs} with the same bits and mode, prompt by prompt: mean ± standard error; ~ = not resolved")
            if t:
                rep.extra.append(t)
    rep.provenance = provenance(rows, by_id, rep.generated)
    if any(meaningless(v) for r in rows for v in r["metrics"].values()):
        rep.notes.append("† computed by a network with random or stand-in weights: checks mechanics, says nothing about quality")
    rep.notes += [f"latency of {', '.join(short_label(r) for r in rows if str(r.get('latency_kind')) == k)}: {k}"
                  for k in sorted({str(r["latency_kind"]) for r in rows if r.get("latency_kind")})]
    rep.notes += sorted({n for r in rows for n in r["notes"]})
    if hidden:
        rep.notes.append(f"{hidden} older run(s) of a configuration shown are not in the tables (`qbench runs` lists them)")
    first = [r for r in rows if r["group"] == 0]
    if plots:
        rep.figures = figures(rows, by_id, _safe(model))
    if grid_prompts > 0:
        rep.grid, why = grid(first, by_id, _safe(model), grid_prompts, CELL, diff)
        if why:
            rep.notes.append(f"no image grid: {why}")
    return rep


# -- Markdown -------------------------------------------------------------------------------------------
def _md(x: Any) -> str:
    return md(x)  # control characters stripped, markup escaped (qbench.safetext)


def markdown_table(t: Table) -> list[str]:
    lines = ["| " + " | ".join(_md(h) for h in t.head) + " |", "|" + "---|" * len(t.head)]
    for row in t.body:
        lines.append("| " + " | ".join(f"**{_md(c.text)}**" if c.best else _md(c.text) for c in row) + " |")
    return lines


def to_markdown(rep: Report, image_name) -> str:
    """``image_name(figure) -> str``: the file name the Markdown links to."""
    out = [f"# qbench report — {_md(rep.model)}", ""]  # every string below through _md: no raw user text
    for g in rep.groups:
        out += [f"## {_md(g['settings'])}", ""]
        if g["note"]:
            out += [f"*{_md(g['note'])}*", ""]
        out += markdown_table(g["table"]) + ["", "**bold**: " + LEGEND[len("Green: "):], ""]
        if g["paired"]:
            out += [_md(g["paired"].note[:1].upper() + g["paired"].note[1:]) + ":", ""] + markdown_table(g["paired"]) + [""]
        out += [f"- {_md(n)}" for n in g["row_notes"]]
    for t in rep.extra:
        out += ["", f"## {_md(t.title)}", "", _md(t.note[:1].upper() + t.note[1:]) + ":", ""] + markdown_table(t)
    out += ["", "## Provenance", ""] + [f"- **{_md(k)}**: {_md(v)}" for k, v in rep.provenance]
    out += [f"- note: {_md(n)}" for n in rep.notes]
    for f in rep.figures + ([rep.grid] if rep.grid else []):
        out += ["", f"## {_md(f.title)}", "", _md(f.caption), "", f"![{_md(f.title)}]({image_name(f)})"]
    return "\n".join(out) + "\n"


def write_report(db: str, out_dir: str, model: str | None = None, *, formats: tuple[str, ...] = FORMATS, baseline: str | None = None,
                 vs: str | None = None, grid_prompts: int = GRID_PROMPTS, diff: bool = True, plots: bool = True,
                 runs: list[str] | None = None) -> list[str]:
    """Write the report of ``model`` (default: every model with finished runs, or of the ``runs``
    named: ids or unique prefixes/suffixes); returns the paths."""
    from qbench.fsutil import atomic_write_text
    from qbench.report_html import to_html

    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise QBenchError(f"unknown report format {', '.join(bad) or '(none)'}; expected md, html or md,html")
    store = Store(db, create=False)
    ids = None
    if runs:
        named = [store.get(x) for x in runs]
        not_done = [r["id"] for r in named if r["status"] != "done"]
        if not_done:
            raise QBenchError(f"run(s) {', '.join(not_done)} not finished: only finished runs are reported")
        ids = [r["id"] for r in named]
    models = [model] if model else (list(dict.fromkeys(r["model"] for r in named)) if runs else store.models())
    if not models:
        raise QBenchError(f"no finished runs in {db}; run `qbench run` first")
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for m in models:
        rep = build(store, m, baseline=baseline, vs=vs, grid_prompts=grid_prompts, diff=diff, plots=plots, runs=ids)
        stem = f"report-{_safe(m)}"
        if "md" in formats:
            for f in rep.figures + ([rep.grid] if rep.grid else []):
                _write_bytes(os.path.join(out_dir, f"{stem}-{f.name}.png"), f.png)
            written.append(atomic_write_text(os.path.join(out_dir, f"{stem}.md"), to_markdown(rep, lambda f, s=stem: f"{s}-{f.name}.png")))
        if "html" in formats:
            written.append(atomic_write_text(os.path.join(out_dir, f"{stem}.html"), to_html(rep)))
    return written


def _write_bytes(path: str, data: bytes) -> str:
    from qbench.fsutil import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write)


# -- command line ---------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    """``qbench report``'s own flags (the CLI adds --model, --out-dir and --db)."""
    from qbench.cli_types import bounded_int, id_list

    p.add_argument("--runs", type=id_list, metavar="ID,ID,...", help="report exactly these runs (ids or unique prefixes/suffixes) instead of the latest run of every configuration")
    p.add_argument("--format", default="md,html", help="md, html or md,html (default)")
    p.add_argument("--baseline", metavar="METHOD", help="each table's baseline (a method or label; default fp), as in `qbench compare`")
    p.add_argument("--vs", metavar="METHOD", help="also pair every configuration with METHOD's configuration of the same bits and mode")
    p.add_argument("--grid-prompts", type=bounded_int(0, 1000), default=GRID_PROMPTS, help=f"prompts (rows) in the image grid, 0-1000; 0: no grid (default {GRID_PROMPTS})")
    p.add_argument("--no-diff", action="store_true", help="no difference-to-baseline heat maps in the image grid")
    p.add_argument("--no-plots", action="store_true", help="no figures")


def main(args, db: str) -> int:
    """``qbench report``: write the files, print their paths."""
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    runs = [x.strip() for x in args.runs.split(",") if x.strip()] if args.runs else None
    for p in write_report(db, args.out_dir, model=args.model, formats=formats, baseline=args.baseline, vs=args.vs,
                          grid_prompts=args.grid_prompts, diff=not args.no_diff, plots=not args.no_plots, runs=runs):
        print(p)
    return 0
