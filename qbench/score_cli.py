"""``qbench score IMAGES --model M --prompts SPEC [--reference DIR_FP|RUN]``: images made elsewhere,
scored with the model's metrics and stored as a labelled run (the ``score`` sequence of
:mod:`qbench.phases`; the readers are :mod:`qbench.score_read`, the phases :mod:`qbench.scoring`).
:func:`score` is the same from Python."""
from __future__ import annotations

import json
from collections.abc import Callable

from qbench.config import RunConfig


def score(cfg: RunConfig, source: str, *, layout: str | None = None, reference: str | None = None, reference_layout: str | None = None,
          label: str | None = None, show_progress: bool = True, say: Callable[[str], None] | None = None):
    """Score the images at ``source`` (a folder, or a JSON / JSONL file, ``FILE#MODEL`` for one model
    of a ModelOpt eval JSON) as ``cfg.model``'s images of ``cfg.prompts`` and store the run in
    ``cfg.db_path``. ``reference``: a folder / file of full-precision images read the same way, or
    a stored fp run id; None: the stored fp run of the same model, prompts and seed, if any.
    Returns the stored :class:`~qbench.runparts.RunResult`. Raises QBenchError (one line per
    problem) before anything is stored when an input is bad."""
    from qbench.phases import RunState, run_phases
    from qbench.scoring import ScoreInputs

    cfg.validate()
    inputs = ScoreInputs(source, layout=layout, reference=reference, reference_layout=reference_layout, label=label)
    state = RunState(cfg, show_progress=show_progress, say=say or (lambda m: None), scored=inputs)
    run_phases(state, "score")
    return state.result


def add_arguments(p) -> None:
    """``qbench score``'s flags."""
    from qbench.score_read import LAYOUTS

    p.add_argument("images", help="folder of images (qbench's image folder, or nunchaku's <name>.png per prompt), or a JSON/JSONL file "
                   "(ModelOpt's eval JSON, FILE#MODEL for one of its models; or {\"prompt_id\"|\"prompt\", \"image_path\"} records, "
                   "e.g. `qbench export-results --runs ID`)")
    p.add_argument("--model", required=True, help="the registered model the images were made with (its metrics apply); see `qbench list models`")
    p.add_argument("--prompts", required=True, help="the prompt spec the images are of (NAME:N or a file); one image per prompt id")
    p.add_argument("--reference", metavar="DIR_FP|RUN", help="full-precision images of the same prompts (a folder or file read the same way), "
                   "or a stored fp run id; default: the stored fp run of the same model, prompts and --seed")
    p.add_argument("--layout", choices=LAYOUTS, help="how to read IMAGES (default: from what it is)")
    p.add_argument("--reference-layout", choices=LAYOUTS, help="how to read a --reference folder or file (default: from what it is)")
    p.add_argument("--label", help="name of the scored images in tables (default: the folder's or file's name)")
    p.add_argument("--seed", type=int, default=42, help="the base seed of qbench's rule (prompt i: seed + i) the images were made with (default 42)")
    p.add_argument("--metrics", help="comma-separated metric names (default: the model's)")
    p.add_argument("--device", default="auto", help="where the metric networks run: auto (default), cpu, cuda ...")
    p.add_argument("--tag", help="free-text label stored with the run")
    p.add_argument("--out-dir", default="reports")
    p.add_argument("--db")
    p.add_argument("--json", action="store_true", help="print the stored result as JSON")
    p.add_argument("--no-progress", action="store_true")


def main(args) -> int:
    """``qbench score`` (``args.metric_option``: (key, value) pairs, parsed by the CLI's parser)."""
    from qbench.tables import console, print_result

    cfg = RunConfig(model=args.model, prompts=args.prompts, seed=args.seed, device=args.device, out_dir=args.out_dir, db=args.db, tag=args.tag,
                    metrics=[m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None, metric_options=dict(args.metric_option))
    con = console(stderr=args.json)
    result = score(cfg, args.images, layout=args.layout, reference=args.reference, reference_layout=args.reference_layout, label=args.label,
                   show_progress=not args.no_progress, say=lambda m: con.print(m, style="dim", markup=False))
    if args.json:
        print(json.dumps(result.to_dict(), indent=1, default=str))
        return 0
    print_result(result.to_dict(), con)
    ref = result.method_report["reference"]
    paired = f"paired with fp run {ref['run_id']}" if ref.get("run_id") else f"reference: {ref.get('source') or ref.get('why')}"
    con.print(f"stored as run {result.run_id} in {cfg.db_path} ({paired}); `qbench compare --model {cfg.model}` compares it", style="dim", markup=False)
    return 0
