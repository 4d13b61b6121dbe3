"""``qbench compare`` in the terminal: one table per group of comparable runs (:mod:`qbench.comparison`).

* Default (compact): measures down, configurations across, each paired difference under its
  metric; configurations that do not fit the console width go to a further table that repeats the
  baseline column, so it reads at 80 columns and uses the room of wider terminals.
* ``--wide``: one row per configuration and every measure as a column (the paired differences in a
  second table), printed at its natural width (for pipes, wide terminals or ``less -S``).

Every user-supplied string (labels, tags, options, metric details, notes) reaches rich as
:class:`rich.text.Text`, never as markup, so ``[bold]`` or ``(x) * [y]`` print as written.
"""
from __future__ import annotations

import math
from typing import Any

from qbench.comparison import short_label
from qbench.tables import MIB, fmt_paired, fmt_rating, fmt_value, meaningless

SIM = "*"  # marks a size computed for the packed format (simulate mode does not store it that way)
OLD_SIZE = "°"  # marks the resident size of a run stored before deployable sizes were kept
SUPERSCRIPTS = "¹²³⁴⁵⁶⁷⁸⁹"
DETAIL_KEYS = ("model", "network", "protocol", "weights", "reference", "formula")


def fmt_se(mean: float | None, se: float | None, signed: bool = False) -> str:
    """``mean ± se`` rounded to the standard error's second significant digit (``85.3 ± 1.1``,
    ``+0.032 ± 0.040``; ``1 ± 0`` for an error below 1e-6 of the value); 4 decimals (2 from 10 up)
    when the error is unknown; ``-`` when missing."""
    if mean is None:
        return "-"
    sign = "+" if signed else ""
    if not math.isfinite(mean):
        return str(mean)
    if se is None or not math.isfinite(se):
        return f"{mean:{sign}.{4 if abs(mean) < 10 else 2}f}"
    if se < 1e-6 * max(1.0, abs(mean)):  # zero, or below what six decimals show
        return f"{mean:{sign}.4g} ± 0"
    dec = min(6, max(0, 1 - math.floor(math.log10(se))))
    return f"{mean:{sign}.{dec}f} ± {se:.{dec}f}"


def _metric_names(rows: list[dict[str, Any]], only: list[str] | None) -> list[str]:
    names: list[str] = []
    for r in rows:
        names += [n for n in r["metrics"] if n not in names and "/" not in n]  # sub-values: qbench show
    if only:
        names = [n for n in only if n in names]
    return names


def _arrow(rows: list[dict[str, Any]], n: str) -> str:
    m = next(r["metrics"][n] for r in rows if n in r["metrics"])
    return "↑" if m.get("higher_is_better", True) else "↓"


def _latency_marks(rows: list[dict[str, Any]]) -> dict[str, str]:
    kinds = sorted({str(r["latency_kind"]) for r in rows if r.get("latency_kind")})
    return {k: SUPERSCRIPTS[i % len(SUPERSCRIPTS)] for i, k in enumerate(kinds)}


def _measures(rows: list[dict[str, Any]], names: list[str], marks: dict[str, str]) -> list[tuple[str, dict[int, str]]]:
    """The compact table's lines: (measure, {row index: cell})."""
    lines: list[tuple[str, dict[int, str]]] = []
    for n in names:
        cells = {}
        for i, r in enumerate(rows):
            m = r["metrics"].get(n)
            cells[i] = "-" if not m or m.get("value") is None else (fmt_rating(m) or fmt_se(m["value"], m.get("stderr"))) + (" †" if meaningless(m) else "")
        lines.append((f"{n} {_arrow(rows, n)}", cells))
        if any(n in (r.get("paired") or {}) for r in rows):
            lines.append(("  Δ paired", {i: ("base" if r["is_baseline"] else _fmt_delta((r.get("paired") or {}).get(n))) for i, r in enumerate(rows)}))

    def num(v, f):
        return "-" if v is None else f(v)

    lines.append(("latency s ↓", {i: num(r["latency_s"], lambda v: f"{v:.3f}") + marks.get(str(r.get("latency_kind")), "") for i, r in enumerate(rows)}))
    lines.append(("step s ↓", {i: num(r["step_s"], lambda v: f"{v:.4f}") for i, r in enumerate(rows)}))
    lines.append(("peak MiB ↓", {i: num(r["peak_bytes"], lambda v: f"{v / MIB:.0f}") for i, r in enumerate(rows)}))
    lines.append(("size MiB ↓", {i: num(r["size_bytes"], lambda v: f"{v / MIB:.2f}") + _size_mark(r) for i, r in enumerate(rows)}))
    lines.append(("× 16-bit ↓", {i: num(r["size_vs_16bit"], lambda v: f"{v:.3f}") for i, r in enumerate(rows)}))
    return lines


def _fmt_delta(d: dict[str, Any] | None) -> str:
    if d is None:
        return "-"
    if d["mean"] == 0 and d["se"] == 0:
        return "0 (identical)"  # every prompt scored the same: no difference, nothing to resolve
    s = fmt_se(d["mean"], d["se"], signed=True)
    if d["se"] is None or not math.isfinite(d["se"]):
        return s + " ± n/a"  # n < 2: no standard error, nothing resolved
    return s + (" ~" if d["se"] and abs(d["mean"]) < 2 * d["se"] else "")


def _size_mark(r: dict[str, Any]) -> str:
    if r["size_bytes"] is None:
        return ""
    return SIM if r["size_simulated"] else ("" if r["size_vs_16bit"] is not None else OLD_SIZE)


def _header(r: dict[str, Any]):
    from rich.text import Text

    t = Text(short_label(r), style="bold")
    eff = r.get("effective_bits")
    eff = f"mean {eff}" if eff and eff != r.get("bits") else None
    for extra in (eff, r.get("options_diff"), f"tag {r['tag']}" if r.get("tag") else None):
        if extra:
            t.append("\n" + extra, style="cyan")
    t.append(f"\nrun {r['run_id'][-6:]}", style="dim")
    if r["is_baseline"]:
        t.append("\nbaseline", style="green")
    return t


def _print_compact(rows, names, marks, con) -> None:
    """Measures down, configurations across; as many configurations per table as the console
    width holds (measured by rich), the baseline first in every table."""
    from rich import box
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    lines = _measures(rows, names, marks)
    widths = []
    for i, r in enumerate(rows):
        head = [short_label(r), f"run {r['run_id'][-6:]}", f"tag {r['tag']}" if r.get("tag") else ""]
        widths.append(max([len(c[i]) for _, c in lines] + [len(h) for h in head] + [min(len(r.get("options_diff") or ""), 18)]))

    def table(cols: list[int]) -> Table:
        t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
        t.add_column("", no_wrap=True)
        for i in cols:
            t.add_column(_header(rows[i]), justify="right", width=widths[i], overflow="fold")
        for m, cells in lines:
            t.add_row(Text(m), *[Text(cells[i]) for i in cols])
        return t

    def fits(cols: list[int]) -> bool:
        return Measurement.get(con, con.options.update_width(10_000), table(cols)).maximum <= con.width

    base = next((i for i, r in enumerate(rows) if r["is_baseline"]), None)
    start = [base] if base is not None else []
    cur = list(start)
    for i in range(len(rows)):
        if i == base:
            continue
        if len(cur) > len(start) and not fits(cur + [i]):
            con.print(table(cur))
            cur = list(start)
        cur.append(i)
    if cur:
        con.print(table(cur))


def _print_natural(table, con) -> None:
    """Print ``table`` at its natural width even where that is wider than the console."""
    from rich.measure import Measurement

    old = con.width
    con.width = max(old, Measurement.get(con, con.options.update_width(10_000), table).maximum)
    try:
        con.print(table)
    finally:
        con.width = old


def _print_wide(rows, names, marks, con) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    t = Table(box=box.SIMPLE_HEAD)
    for col in ("run", "configuration", "options", "tag"):
        t.add_column(col, no_wrap=True)
    for n in names:
        t.add_column(Text(f"{n} {_arrow(rows, n)}"), justify="right", no_wrap=True)
    for col in ("latency s", "step s", "peak MiB", "size MiB", "× 16-bit"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        t.add_row(
            *[Text(x) for x in (r["run_id"][-6:] + (" (base)" if r["is_baseline"] else ""), short_label(r), r.get("options_diff") or "-", r.get("tag") or "-")],
            *[Text(fmt_value(r["metrics"].get(n))) for n in names],
            Text(("-" if r["latency_s"] is None else f"{r['latency_s']:.3f}") + marks.get(str(r.get("latency_kind")), "")),
            Text("-" if r["step_s"] is None else f"{r['step_s']:.4f}"),
            Text("-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / MIB:.0f}"),
            Text("-" if r["size_bytes"] is None else f"{r['size_bytes'] / MIB:.2f}{_size_mark(r)}"),
            Text("-" if r["size_vs_16bit"] is None else f"{r['size_vs_16bit']:.3f}"),
        )
    _print_natural(t, con)
    paired = [r for r in rows if r.get("paired")]
    pnames = [n for n in names if any(n in r["paired"] for r in paired)]
    if paired and pnames:
        p = Table(box=box.SIMPLE_HEAD, title=Text("paired Δ vs the baseline (same prompts and seeds; mean ± se over prompts)"), title_justify="left")
        p.add_column("run", no_wrap=True)
        p.add_column("configuration", no_wrap=True)
        for n in pnames:
            p.add_column(Text(f"Δ {n} {_arrow(rows, n)}"), justify="right", no_wrap=True)
        for r in paired:
            p.add_row(Text(r["run_id"][-6:]), Text(short_label(r)), *[Text(fmt_paired(r["paired"].get(n))) for n in pnames])
        _print_natural(p, con)


def settings_line(r: dict[str, Any]) -> str:
    s = r["sampling"]

    def v(k):
        return "?" if s.get(k) is None else str(s[k])

    return (f"prompts {v('prompts')} ({v('n_prompts')} prompts) · seed {v('seed')} · steps {v('steps')} · guidance {v('guidance')} · "
            f"{v('resolution')} px · {v('dtype')} on {v('device_type')} · batch {v('batch_size')}")


def print_compare(model: str, rows: list[dict[str, Any]], con, *, wide: bool = False, metrics: list[str] | None = None,
                  hidden: int = 0, unfinished: dict[str, int] | None = None) -> None:
    """Print the rows of :func:`qbench.comparison.compare` for one model: a table per group, each
    with its settings and, when it has no baseline or other settings than the first, why."""
    from rich.text import Text

    con.print(Text(f"qbench compare — {model}", style="bold"))
    groups: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    for gi, grows in groups.items():
        names = _metric_names(grows, metrics)
        marks = _latency_marks(grows)
        con.print(Text(f"\n[{gi + 1}] " if len(groups) > 1 else "\n", style="bold") + Text(settings_line(grows[0]), style="bold"))
        if grows[0].get("group_note"):
            con.print(Text(grows[0]["group_note"], style="yellow"))
        (_print_wide if wide else _print_compact)(grows, names, marks, con)
        for r in grows:
            if r.get("paired_note"):
                con.print(Text(f"{short_label(r)} {r['run_id'][-6:]}: {r['paired_note']}", style="yellow"))
        for k, mark in marks.items():
            con.print(Text(f"{mark} latency: {k}", style="dim"))
    _footnotes(rows, _metric_names(rows, metrics), con, hidden, unfinished or {})


def _footnotes(rows, names, con, hidden: int, unfinished: dict[str, int]) -> None:
    from rich.text import Text

    def dim(s: str) -> None:
        con.print(Text(s, style="dim"))

    dim("")
    weights = sorted({r["weights"] for r in rows if r["weights"]})
    dim(f"weights: {'; '.join(weights)} · device: {rows[0]['device']} · peak memory: {rows[0]['memory_kind']}, batch 1 · latency: batch 1, median")
    if any(r.get("paired") for r in rows):
        dim("Δ paired: this run − the baseline, prompt by prompt (same prompts and seeds): mean ± standard error; ~ within two standard errors of zero")
    if any(r["mode"] == "simulate" for r in rows):
        dim("sim: simulate mode (fake quantization: float weights rounded to the grid, float kernels)")
    dim("size: deployable bytes of the denoiser; × 16-bit: its ratio to the same model at 16 bits"
        + (f"; {SIM} computed for the packed format (simulate mode keeps float weights)" if any(r["size_simulated"] for r in rows) else "")
        + (f"; {OLD_SIZE} resident bytes (run stored before deployable sizes were kept)" if any(_size_mark(r) == OLD_SIZE for r in rows) else ""))
    for n in names:
        d = next(r["metrics"][n].get("details", {}) for r in rows if n in r["metrics"])
        info = ", ".join(f"{k}={v}" for k, v in d.items() if k in DETAIL_KEYS)
        if info:
            dim(f"{n}: {info}")
    for n in names:  # a metric's own caveats (small-n FID, ...), once per metric
        for note in sorted({r["metrics"][n]["details"]["note"] for r in rows if n in r["metrics"] and (r["metrics"][n].get("details") or {}).get("note")}):
            con.print(Text(f"{n}: {note}", style="yellow"))
    if any(meaningless(m) for r in rows for m in r["metrics"].values()):
        con.print(Text("† computed by a network with random or stand-in weights: checks mechanics, says nothing about quality", style="yellow"))
    for note in sorted({n for r in rows for n in r["notes"]}):
        con.print(Text(f"note: {note}", style="yellow"))
    more = [f"{hidden} older run(s) of a configuration shown"] if hidden else []
    more += [f"{n} {status}" for status, n in sorted(unfinished.items())]
    if more:
        dim("not shown: " + ", ".join(more) + " — `qbench runs` lists every run")
