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


def meaningless(m: dict[str, Any]) -> bool:
    return m.get("details", {}).get("meaningful") is False


def _arrow(m: dict[str, Any]) -> str:
    return "↑" if m.get("higher_is_better", True) else "↓"


def _mib(b: Any) -> str:
    return "-" if b in (None, 0) else f"{b / MIB:.2f}"


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


def print_result(res: dict[str, Any], con) -> None:
    """One run's measures as a table (``qbench run``, ``qbench show``); user strings printed as
    written, never as rich markup."""
    from rich.table import Table
    from rich.text import Text

    cfg = res["config"]
    tag = f" [{cfg['tag']}]" if cfg.get("tag") else ""
    t = Table(title=Text(f"qbench run {res['run_id']} — {cfg['model']} / {res['label']}{tag}"), title_justify="left", show_header=True)
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("n", justify="right")
    t.add_column("how it was made")
    for name, m in res["metrics"].items():
        d = m.get("details", {})
        how = ", ".join(f"{k}={v}" for k, v in d.items() if k not in ("meaningful",) and not isinstance(v, (dict, list)))
        t.add_row(Text(f"{name} {_arrow(m)}"), Text(fmt_value(m)), Text(str(m.get("n", ""))), Text(how[:120]))
    lat = res["latency"]
    e2e = lat.get("end_to_end_s", {})
    kind = f"; {lat['kind']}" if lat.get("kind") else ""
    t.add_row("latency ↓ (s, end to end)", f"{e2e.get('median', float('nan')):.4f} (IQR {e2e.get('iqr', 0):.4f})", str(e2e.get("n", "")), Text(f"batch 1, {lat.get('warmup')} warm-up + {lat.get('repeats')} timed runs, median{kind}"))
    if "per_step_s" in lat:
        ps = lat["per_step_s"]
        t.add_row("latency ↓ (s, per step)", f"{ps['median']:.4f} (IQR {ps['iqr']:.4f})", str(ps["n"]), "time between consecutive step ends")
    mem = res["memory"]
    above = mem.get("peak_above_baseline_bytes")
    extra = f"; {_mib(above)} MiB above the process before the model loaded" if above is not None else ""
    t.add_row("peak memory ↓ (MiB)", _mib(mem.get("peak_bytes")), "", Text(f"{mem.get('kind')}, {mem.get('measured_during')}{extra}"))
    size = res.get("size") or {}
    if size.get("deploy_bytes"):
        t.add_row("denoiser size ↓ (MiB)", _mib(size["deploy_bytes"]), "", Text(f"deployable: {size.get('deploy_kind')}"))
        t.add_row("× 16-bit model ↓", f"{size['deploy_vs_16bit']:.3f}" if size.get("deploy_vs_16bit") else "-", "", Text(f"of {_mib(size.get('bytes_16bit'))} MiB at 16 bits; resident now {_mib(size.get('resident_bytes'))} MiB"))
    else:
        t.add_row("denoiser size ↓ (MiB)", _mib(res.get("model_bytes")), "", "resident bytes of stored parameters and buffers")
    con.print(t)
    prov = res["provenance"]
    con.print(Text(
        f"weights: {res['model_source']} · mode: {res['mode']} · dtype: {prov.get('dtype')} · device: {prov.get('device_name')} "
        f"· images: {res['n_images']} ({res['n_generated']} generated, rest from cache) in {res['images_dir']} "
        f"· generation {res['timings'].get('generate_s', 0):.1f} s, metrics {res['timings'].get('metrics_s', 0):.1f} s", style="dim"))
    if any(meaningless(m) for m in res["metrics"].values()):
        con.print(Text("† computed by a network with random or stand-in weights: checks mechanics, says nothing about quality", style="yellow"))
    for note in res.get("notes", []):
        con.print(Text(f"note: {note}", style="yellow"))


def status_text(run: dict[str, Any]):
    """``done`` / ``running`` / ``stale`` / ``interrupted`` / ``failed``, coloured (a Text)."""
    from rich.text import Text

    colour = {"done": "green", "running": "cyan", "stale": "red", "interrupted": "yellow", "failed": "red"}.get(run["status"], "")
    return Text(run["status"], style=colour)


def print_run(run: dict[str, Any], con) -> None:
    from rich.pretty import Pretty
    from rich.text import Text

    if run.get("result"):
        print_result(run["result"], con)
    line = Text("status: ", style="bold") + status_text(run)
    for extra in (run.get("error"), run.get("status_note")):
        if extra:
            line += Text(f" — {extra}")
    con.print(line)
    if not run.get("result"):
        con.print(Text(f"run {run['id']}: {run['model']} / {run['label']}, started {run['created']}" + (f", ended {run['finished']}" if run.get("finished") else "")))
    for title, obj in [("config", run["config"])] + ([(k.replace("_", " "), run["result"].get(k)) for k in ("sampling", "size", "method", "method_report", "provenance")] if run.get("result") else []):
        con.print(Text(f"{title}:", style="bold"))
        con.print(Pretty(obj))


def print_runs(runs: list[dict[str, Any]], con) -> None:
    """The stored runs, one line each (``qbench runs``), then why each unfinished one stopped."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in ("run", "status"):
        t.add_column(col, no_wrap=True)
    for col in ("model", "configuration", "prompts"):
        t.add_column(col, overflow="fold")
    for r in runs:
        s = (r["result"] or {}).get("sampling") or {}
        prompts = str(r["config"].get("prompts") or "default") if not s else s["prompts"] if str(s["prompts"]).endswith(f":{s['n_prompts']}") else f"{s['prompts']} ({s['n_prompts']})"
        label = r["label"].replace("simulate", "sim") + (f" tag {r['config']['tag']}" if r["config"].get("tag") else "")
        t.add_row(Text(r["id"]), status_text(r), Text(r["model"]), Text(label), Text(prompts))
    con.print(t)
    for r in runs:
        why = "; ".join(x for x in (r.get("error"), r.get("status_note")) if x)
        if r["status"] != "done" and why:
            con.print(Text(f"{r['id'][-6:]} {r['status']}: {why}", style="yellow" if r["status"] != "running" else "dim"))


def print_registry(kind: str, registry, con) -> None:
    from rich.table import Table
    from rich.text import Text

    from qbench.registry import plugin_options

    t = Table(title=kind, title_justify="left")
    t.add_column("name", style="bold")
    t.add_column("description")
    with_options = kind in ("methods", "metrics")
    if with_options:
        t.add_column("options (" + ("-O" if kind == "methods" else "-M") + " key=value)")
    for e in registry:
        cells = [Text(e.name), Text(e.description)]
        if with_options:
            cells.append(Text(", ".join(o["name"] for o in plugin_options(e)) or "-"))
        t.add_row(*cells)
    con.print(t)
