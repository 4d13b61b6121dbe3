"""Rich terminal tables for runs, comparisons and registries."""
from __future__ import annotations

import math
from typing import Any

MIB = 1024 * 1024


def fmt_rating(m: dict[str, Any] | None) -> str | None:
    """``1034 [1012, 1058] n=120`` for a stored rating metric (its ``details`` hold ``ci95``: see
    :func:`qbench.arena.as_metric`); None for any other metric."""
    details = (m or {}).get("details")
    ci = details.get("ci95") if isinstance(details, dict) else None
    if not ci or m.get("value") is None:
        return None
    lo, hi = ci
    span = f" [{lo:.0f}, {hi:.0f}]" if lo is not None and hi is not None else ""
    return f"{m['value']:.0f}{span} n={m.get('n')}"


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
    if fmt_rating(m):  # an arena or judge rating: value [95 % interval] n=votes
        return fmt_rating(m)
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
    if d["mean"] == 0 and d["se"] == 0:
        return "0 (identical)"
    if d["se"] is None or not math.isfinite(d["se"]):
        return f"{d['mean']:+.{digits}f} ± n/a"
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
        t.add_row(Text(f"{name} {_arrow(m)}"), Text(fmt_value(m)), Text(str(m.get("n", ""))), Text(how))
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
        f"· images: {res['n_images']} ({res['n_generated']} generated by this run, {res['n_images'] - res['n_generated']} from the cache) in {res['images_dir']} "
        f"· generation {res['timings'].get('generate_s', 0) + res['timings'].get('references_s', res['timings'].get('reference_s', 0)):.1f} s, "
        f"metrics {res['timings'].get('score_s', res['timings'].get('metrics_s', 0)):.1f} s", style="dim"))
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
    for col in ("model", "configuration", "prompts", "settings"):
        t.add_column(col, overflow="fold")
    for r in runs:
        s = (r["result"] or {}).get("sampling") or {}
        prompts = str(r["config"].get("prompts") or "default") if not s else s["prompts"] if str(s["prompts"]).endswith(f":{s['n_prompts']}") else f"{s['prompts']} ({s['n_prompts']})"
        label = r["label"].replace("simulate", "sim") + (f" tag {r['config']['tag']}" if r["config"].get("tag") else "")
        t.add_row(Text(r["id"]), status_text(r), Text(r["model"]), Text(label), Text(prompts), Text(_settings_text(r["config"])))
    con.print(t)
    for r in runs:
        why = "; ".join(x for x in (r.get("error"), r.get("status_note")) if x)
        if r["status"] != "done" and why:
            con.print(Text(f"{r['id'][-6:]} {r['status']}: {why}", style="yellow" if r["status"] != "running" else "dim"))
            if r["status"] in ("interrupted", "stale", "failed"):
                con.print(Text(f"    re-run: {_command(r['config'])}", style="dim"))


def _settings_text(config: dict[str, Any]) -> str:
    """seed / steps / guidance / resolution / batch and method options a run was given."""
    parts = [f"seed {config.get('seed', 42)}"]
    for k, name in (("steps", "steps"), ("guidance", "guidance"), ("resolution", "px"), ("batch_size", "batch")):
        if config.get(k) is not None and not (k == "batch_size" and config[k] == 4):
            parts.append(f"{name} {config[k]}")
    parts += [f"{k}={v}" for k, v in (config.get("method_options") or {}).items()]
    return " · ".join(parts)


def _command(config: dict[str, Any]) -> str:
    from qbench.config import RunConfig

    try:
        return RunConfig.from_dict({k: v for k, v in config.items() if k in RunConfig.__dataclass_fields__}, validate=False).to_cli()
    except Exception:  # noqa: BLE001 - a config stored by another qbench version: no command to offer
        return "(the stored configuration: qbench show RUN --json)"


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
            cells.append(Text("; ".join(_option_text(o) for o in plugin_options(e)) or "-"))
        t.add_row(*cells)
    con.print(t)
    if kind == "metrics":
        from qbench.metrics.common import GLOBAL_OPTIONS
        from qbench.options import describe_options

        con.print(Text("every metric also takes: " + "; ".join(_option_text(o) for o in describe_options(GLOBAL_OPTIONS)), style="dim"))
    if with_options:
        con.print(Text("`qbench list " + kind + " --json` gives each option's help text", style="dim"))


def _option_text(o: dict[str, Any]) -> str:
    """``group_size (int)``, ``search (grid|own, default own)``."""
    kind = "|".join(map(str, o["choices"])) if o.get("choices") else o["kind"]
    default = "" if o.get("default") in (None, {}, [], "") else f", default {o['default']}"
    return f"{o['name']} ({kind}{default})"


def print_plan_table(plan: dict, con) -> None:
    """``qbench plan``: a row per sweep cell and the total."""
    from rich.table import Table
    from rich.text import Text

    from rich import box

    narrow = con.width < 120  # counts in k / M so that every number fits at 80 columns (--json: exact)

    def count(n: int) -> str:
        if not narrow or n < 10_000:
            return f"{n:,}"
        return f"{n / 1e6:.2f}M" if n >= 1_000_000 else f"{n / 1e3:.0f}k"

    def cells(r: dict) -> list[str]:
        name = [r.get("model", "total"), r.get("method", "")]
        nums = [count(r["prompts"]) if "prompts" in r else "", count(r["images"]), count(r["calibration_images"]), count(r["forwards"]),
                f"{r['tflops_per_image']:.1f}" if "tflops_per_image" in r else "",
                f"{r['pflops']:,.0f}" if narrow else f"{r['pflops']:,.1f}", f"{r['gpu_hours']:,.1f}", f"{r['wall_h']:,.1f}"]
        if narrow:  # one text column (model and method), no TFLOP/img (the model's, same in each of its rows)
            return [" ".join(x for x in name if x)] + nums[:4] + nums[5:]
        return name + nums

    rows = [cells(r) for r in plan["cells"]] + [cells(plan["total"])]
    if con.width < 72:  # too narrow for the columns: one wrapped line per cell, every value labelled
        con.print(Text(f"qbench plan — {plan['gpus']} x {plan['gpu']} at {plan['effective_tflops']:.0f} effective TFLOP/s each"))
        for i, r in enumerate(rows):
            con.print(Text(f"{r[0]}: n {r[1]} · images {r[2]} · calib {r[3]} · fwd {r[4]} · PFLOP {r[5]} · GPU-h {r[6]} · wall h {r[7]}",
                           style="bold" if i == len(rows) - 1 else ""))
        con.print(Text("(k = thousand, M = million; a wider terminal or --json shows exact counts)", style="dim"))
        con.print(Text(plan["assumptions"], style="dim"))
        return
    t = Table(title=f"qbench plan — {plan['gpus']} x {plan['gpu']} at {plan['effective_tflops']:.0f} effective TFLOP/s each", title_justify="left",
              box=box.SIMPLE_HEAD if narrow else box.HEAVY_HEAD, pad_edge=not narrow)
    heads = (("cell", "n", "images", "calib", "fwd", "PFLOP", "GPU-h", "wall h") if narrow else
             ("model", "method", "prompts", "new images", "calib images", "forwards", "TFLOP/img", "PFLOP", "GPU-h", "wall h"))
    for i, col in enumerate(heads):
        text = col in ("model", "method", "cell")  # numbers keep their full width; the text wraps
        t.add_column(col, justify="left" if text else "right", no_wrap=not text, overflow="fold",
                     min_width=None if text else max([len(col)] + [len(r[i]) for r in rows]))
    for i, r in enumerate(rows):
        t.add_row(*[Text(v, style="bold" if i == len(rows) - 1 else "") for v in r])
    con.print(t)
    if narrow:
        con.print(Text("n: prompts · images: new images · calib: calibration images · fwd: denoiser forwards "
                       "(k = thousand, M = million; a wider terminal or --json shows exact counts and TFLOP per image)", style="dim"))
    con.print(Text(plan["assumptions"], style="dim"))
