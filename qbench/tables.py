"""Rich terminal tables for runs, comparisons and registries."""
from __future__ import annotations

import math
from typing import Any

MIB = 1024 * 1024


def console(stderr: bool = False):
    """A rich console; when output is not a terminal (logs, pipes) tables get 250 columns instead
    of rich's 80, so that wide comparison tables stay readable."""
    import os
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if (stream.isatty() or os.environ.get("COLUMNS")) else 250
    return Console(stderr=stderr, width=width)


def fmt_value(m: dict[str, Any] | None) -> str:
    if not m or m.get("value") is None:
        return "-"
    v = m["value"]
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    digits = 4 if abs(v) < 10 else 2
    s = f"{v:.{digits}f}"
    if m.get("stderr") not in (None, 0) and math.isfinite(m["stderr"]):
        s += f" ± {m['stderr']:.{digits}f}"
    if meaningless(m):
        s += " †"
    return s


_SHOWN_OPTIONS = ("base", "group_size", "group_scales", "w_granularity", "a_granularity", "w_clip", "param", "parameterisation", "search", "overrides")


def method_options_text(desc: dict[str, Any], limit: int = 48) -> str:
    """The method's resolved options in one short cell (bits and mode have their own columns)."""
    opts = desc.get("options") or {}
    shown = [k for k in _SHOWN_OPTIONS if opts.get(k) not in (None, "", [], {})]
    text = " ".join(f"{k}={opts[k]}" for k in shown)
    return (text[: limit - 1] + "…") if len(text) > limit else (text or "-")


def meaningless(m: dict[str, Any]) -> bool:
    return m.get("details", {}).get("meaningful") is False


def _arrow(m: dict[str, Any]) -> str:
    return "↑" if m.get("higher_is_better", True) else "↓"


def _mib(b: Any) -> str:
    return "-" if b in (None, 0) else f"{b / MIB:.2f}"


def compare_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method/bit setting (its latest finished run)."""
    latest: dict[str, dict[str, Any]] = {}
    for r in runs:  # ordered by creation
        latest[r["label"]] = r
    fp_bytes = next((r["result"].get("model_bytes") for r in latest.values() if r["method"] == "fp"), None)
    rows = []
    for label, r in latest.items():
        res = r["result"]
        lat = res.get("latency", {})
        size = res.get("model_bytes")
        rows.append(
            {
                "run_id": r["id"],
                "label": label,
                "method": r["method"],
                "bits": r["bits"],
                "mode": r["mode"],
                "method_config": res.get("method", {}),
                "weights": res.get("model_source"),
                "metrics": r["metrics"],
                "latency_s": lat.get("end_to_end_s", {}).get("median"),
                "step_s": lat.get("per_step_s", {}).get("median"),
                "peak_bytes": res.get("memory", {}).get("peak_bytes"),
                "memory_kind": res.get("memory", {}).get("kind"),
                "model_bytes": size,
                "size_vs_fp": (size / fp_bytes) if size and fp_bytes else None,
                "n_images": res.get("n_images"),
                "device": res.get("provenance", {}).get("device_name"),
                "date": r["created"],
                "notes": res.get("notes", []),
                "sampling": {k: r["config"].get(k) for k in PAIRING_KEYS},
            }
        )
    order = {"fp": 0}
    rows.sort(key=lambda x: (order.get(x["method"], 1), x["method"], -(_bits_w(x["bits"]))))
    return rows


PAIRING_KEYS = ("prompts", "seed", "steps", "guidance", "resolution", "model_path")


def add_paired(rows: list[dict[str, Any]], per_image) -> None:
    """Give every non-fp row ``paired``: metric -> {mean, se, n} of (row - fp) over the prompts
    both runs scored, when an fp row with the same prompts, seed and sampling settings exists.
    ``per_image(run_id)`` returns a run's per-prompt scores (``Store.per_image``)."""
    from qbench.metrics.stats import paired_difference

    base = next((r for r in rows if r["method"] == "fp"), None)
    if base is None:
        return
    base_scores = per_image(base["run_id"])
    if not base_scores:
        return
    for r in rows:
        if r is base or r["sampling"] != base["sampling"]:
            continue
        mine = per_image(r["run_id"])
        paired = {}
        for name, scores in mine.items():
            # psnr / ssim / lpips already compare with the fp images: pairing them again means nothing
            ref = str(r["metrics"].get(name, {}).get("details", {}).get("reference", ""))
            if name in base_scores and not ref.startswith("full-precision"):
                d = paired_difference(base_scores[name], scores)
                if d is not None:
                    paired[name] = d
        if paired:
            r["paired"] = paired


def _bits_w(bits: str | None) -> int:
    if not bits:
        return 99
    try:
        return int(bits.upper().split("A")[0].lstrip("W"))
    except ValueError:
        return 0


def print_compare(model: str, rows: list[dict[str, Any]], con) -> None:
    from rich.table import Table

    metric_names: list[str] = []
    for r in rows:
        for n in r["metrics"]:
            if n not in metric_names and "/" not in n:  # sub-values (toy-acc/colour, ...): qbench show
                metric_names.append(n)
    t = Table(title=f"qbench compare — {model}", title_justify="left")
    for col in ("method", "mode", "bits", "config"):
        t.add_column(col)
    for n in metric_names:
        m = next(r["metrics"][n] for r in rows if n in r["metrics"])
        t.add_column(f"{n} {_arrow(m)}", justify="right")
    for col in ("latency s", "step s", "peak MiB", "denoiser MiB", "× fp size", "run"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(
            r["method"],
            r["mode"] or "-",
            r["bits"] or "-",
            method_options_text(r["method_config"]),
            *[fmt_value(r["metrics"].get(n)) for n in metric_names],
            f"{r['latency_s']:.3f}" if r["latency_s"] is not None else "-",
            f"{r['step_s']:.4f}" if r["step_s"] is not None else "-",
            _mib(r["peak_bytes"]),
            _mib(r["model_bytes"]),
            f"{r['size_vs_fp']:.3f}" if r["size_vs_fp"] else "-",
            r["run_id"][-6:],
        )
    con.print(t)
    weights = sorted({r["weights"] for r in rows if r["weights"]})
    con.print(f"[dim]weights: {'; '.join(weights)} · device: {rows[0]['device']} · memory: {rows[0]['memory_kind']}[/dim]")
    details = {n: next(r["metrics"][n]["details"] for r in rows if n in r["metrics"]) for n in metric_names}
    for n, d in details.items():
        info = ", ".join(f"{k}={v}" for k, v in d.items() if k in ("model", "network", "protocol", "weights", "reference", "formula"))
        if info:
            con.print(f"[dim]{n}: {info}[/dim]")
    _print_paired(model, rows, metric_names, con)
    if any(meaningless(m) for r in rows for m in r["metrics"].values()):
        con.print("[yellow]† computed by a network with random or stand-in weights: checks mechanics, says nothing about quality[/yellow]")
    for note in sorted({n for r in rows for n in r["notes"]}):
        con.print(f"[yellow]note: {note}[/yellow]")


def fmt_paired(d: dict[str, Any] | None, digits: int | None = None) -> str:
    """One paired difference as ``+mean ± se``, marked `` ~`` when within two standard errors of
    zero (``-`` when missing; no ``±`` when the error is unknown). Digits: 4 below 10, else 2."""
    if d is None:
        return "-"
    if digits is None:
        digits = 4 if abs(d["mean"]) < 10 else 2
    if not math.isfinite(d["se"]):
        return f"{d['mean']:+.{digits}f}"
    unresolved = d["se"] > 0 and abs(d["mean"]) < 2 * d["se"]
    return f"{d['mean']:+.{digits}f} ± {d['se']:.{digits}f}" + (" ~" if unresolved else "")


def _print_paired(model: str, rows: list[dict[str, Any]], metric_names: list[str], con) -> None:
    from rich.table import Table

    paired_rows = [r for r in rows if r.get("paired")]
    if not paired_rows:
        return
    names = [n for n in metric_names if any(n in r["paired"] for r in paired_rows)]
    t = Table(title=f"paired Δ vs fp — {model} (same prompts and seeds; mean ± se over prompts)", title_justify="left")
    for col in ("method", "mode", "bits"):
        t.add_column(col)
    for n in names:
        m = next(r["metrics"][n] for r in rows if n in r["metrics"])
        t.add_column(f"Δ {n} {_arrow(m)}", justify="right")
    for r in paired_rows:
        cells = [fmt_paired(r["paired"].get(n)) for n in names]
        t.add_row(r["method"], r["mode"] or "-", r["bits"] or "-", *cells)
    con.print(t)
    con.print("[dim]~ : within two standard errors of zero (not resolved by these prompts)[/dim]")


def print_result(res: dict[str, Any], con) -> None:
    from rich.table import Table

    cfg = res["config"]
    t = Table(title=f"qbench run {res['run_id']} — {cfg['model']} / {res['label']}", title_justify="left", show_header=True)
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("n", justify="right")
    t.add_column("how it was made")
    for name, m in res["metrics"].items():
        d = m.get("details", {})
        how = ", ".join(f"{k}={v}" for k, v in d.items() if k not in ("meaningful",) and not isinstance(v, (dict, list)))
        t.add_row(f"{name} {_arrow(m)}", fmt_value(m), str(m.get("n", "")), how[:120])
    lat = res["latency"]
    e2e = lat.get("end_to_end_s", {})
    t.add_row("latency ↓ (s, end to end)", f"{e2e.get('median', float('nan')):.4f} (IQR {e2e.get('iqr', 0):.4f})", str(e2e.get("n", "")), f"batch 1, {lat.get('warmup')} warm-up + {lat.get('repeats')} timed runs, median")
    if "per_step_s" in lat:
        ps = lat["per_step_s"]
        t.add_row("latency ↓ (s, per step)", f"{ps['median']:.4f} (IQR {ps['iqr']:.4f})", str(ps["n"]), "time between consecutive step ends")
    t.add_row("peak memory ↓ (MiB)", _mib(res["memory"].get("peak_bytes")), "", f"{res['memory'].get('kind')}, {res['memory'].get('measured_during')}")
    t.add_row("denoiser size ↓ (MiB)", _mib(res["model_bytes"]), "", "exact bytes of stored parameters and buffers")
    con.print(t)
    prov = res["provenance"]
    con.print(
        f"[dim]weights: {res['model_source']} · mode: {res['mode']} · dtype: {prov.get('dtype')} · device: {prov.get('device_name')} "
        f"· images: {res['n_images']} ({res['n_generated']} generated, rest from cache) in {res['images_dir']} "
        f"· generation {res['timings'].get('generate_s', 0):.1f} s, metrics {res['timings'].get('metrics_s', 0):.1f} s[/dim]"
    )
    if any(meaningless(m) for m in res["metrics"].values()):
        con.print("[yellow]† computed by a network with random or stand-in weights: checks mechanics, says nothing about quality[/yellow]")
    for note in res.get("notes", []):
        con.print(f"[yellow]note: {note}[/yellow]")


def print_run(run: dict[str, Any], con) -> None:
    from rich.pretty import Pretty

    if run.get("result"):
        print_result(run["result"], con)
    con.print(f"[bold]status:[/bold] {run['status']}" + (f" — {run['error']}" if run.get("error") else ""))
    con.print("[bold]config:[/bold]")
    con.print(Pretty(run["config"]))
    if run.get("result"):
        con.print("[bold]method:[/bold]")
        con.print(Pretty(run["result"].get("method")))
        con.print("[bold]method report:[/bold]")
        con.print(Pretty(run["result"].get("method_report")))
        con.print("[bold]provenance:[/bold]")
        con.print(Pretty(run["result"].get("provenance")))


def print_registry(kind: str, registry, con) -> None:
    from rich.table import Table

    t = Table(title=f"{kind}", title_justify="left")
    t.add_column("name", style="bold")
    t.add_column("description")
    for e in registry:
        t.add_row(e.name, e.description)
    con.print(t)
