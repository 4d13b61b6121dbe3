"""``qbench score``: images made elsewhere, scored with the run's metrics and stored as a run.

The ``score`` sequence of :mod:`qbench.phases` (``plan-images -> reference-images -> read ->
score -> store``) shares the ``score`` and ``store`` phases with ``qbench run``; the phases here:

* :func:`plan_images` — the prompts, metrics and their options (checked as ``qbench run`` checks
  them), the images (:func:`qbench.score_read.read_images`: mapped to prompt ids, every one decoded
  once), the reference, and the run's identity (the images' content digest, the reference's, the
  metrics, their code and libraries). No model is located or loaded.
* the **reference** (full-precision images of the same prompts, for fidelity metrics such as PSNR
  and SSIM, and the settings the run is grouped by in ``qbench compare``): ``--reference PATH``, a
  folder or JSON file read like the images; or ``--reference RUN`` / by default a stored ``fp``
  run of the same model, prompts (ids and texts) and ``--seed``, whose image files are read.
  With a stored fp run the scored run takes that run's settings (``result["sampling"]``), so
  ``compare`` pairs the two prompt by prompt; otherwise its settings are the model, prompts,
  seed and the images' resolution, the rest unknown (None).
* :func:`build_scored_result` — the stored :class:`~qbench.runparts.RunResult`: method ``images``
  (``methods/images.py``), latency, memory and size n/a (said so), provenance "scored from images
  made elsewhere", ``image_files`` (prompt id -> file) for ``export-results`` and report grids.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from qbench.errors import ConfigError, QBenchError

MADE_ELSEWHERE = "scored from images made elsewhere"
NA = "n/a: images made elsewhere (qbench did not generate them)"


@dataclass
class ScoreInputs:
    """What ``qbench score`` was given, and what :func:`plan_images` read."""

    source: str  # folder or JSON file (FILE#NAME for one model of a ModelOpt eval JSON)
    layout: str | None = None
    reference: str | None = None  # a folder / JSON file, a stored run id, or None: the stored fp run
    reference_layout: str | None = None
    label: str | None = None
    images: Any = None  # qbench.score_read.ImageSet
    reference_set: Any = None  # ImageSet of the reference (a folder, a file, or the fp run's files)
    reference_run: dict[str, Any] | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def plan_images(s) -> None:
    """The ``plan-images`` phase: everything checked and read (see the module docstring)."""
    from qbench.catalog import METHODS, METRICS
    from qbench.dist import current
    from qbench.models.loader import ModelRef, get_spec, resolve_device
    from qbench.preflight import (
        RunPlan,
        _Problems,
        check_metric_options,
        resolve_metrics,
    )
    from qbench.prompts import load_prompts
    from qbench.score_read import read_images, split_source

    sc: ScoreInputs = s.scored
    cfg = s.cfg
    spec = get_spec(cfg.model)
    cfg = cfg.replace(prompts=cfg.prompts or spec.default_prompts)
    p = _Problems()
    prompts = p.check("", load_prompts, cfg.prompts) or []
    metric_names = p.check("", resolve_metrics, cfg, spec) or []
    metric_options = p.check("", check_metric_options, cfg.metric_options, {n: METRICS.get(n) for n in metric_names})
    device = p.check("", resolve_device, cfg.device)
    p.raise_if_any()
    s.dist = current(cfg.device)
    sc.images = p.check("", read_images, sc.source, prompts, seed=cfg.seed, layout=sc.layout)
    if sc.reference is not None and os.path.exists(split_source(sc.reference)[0]):  # a folder or file: its problems too, together
        sc.reference_set = p.check("", lambda: read_images(sc.reference, prompts, seed=cfg.seed, layout=sc.reference_layout, what="reference"))
    p.raise_if_any()
    opts = {"label": sc.label or _default_label(sc.images), "source": sc.images.source, "layout": sc.images.layout,
            "entry": sc.images.entry, "digest": sc.images.digest}
    cfg = cfg.replace(method="images", bits=None, mode=None, method_options=opts)
    method = METHODS.get("images")(cfg)
    import torch

    ref = ModelRef(spec, sc.images.source, True, f"images:{sc.images.source}", device, torch.float32, sc.images.digest)
    plan = RunPlan(cfg, spec, ref, method, prompts, metric_names, metric_options or {})
    ctx = plan.metric_context(device)
    for name in metric_names:
        p.check(f"metric {name}", METRICS.get(name).preflight, ctx, prompts)
    p.raise_if_any()
    plan.needs_fp_reference = any(getattr(METRICS.get(n), "needs_fp_reference", False) for n in metric_names)
    s.cfg, s.plan = cfg, plan
    _locate_reference(sc, plan)
    s.identity = score_identity(plan, sc)


def _default_label(images) -> str:
    base = os.path.basename(images.source.rstrip(os.sep)) or images.source
    return f"{base}#{images.entry}" if images.entry else base


def _locate_reference(sc: ScoreInputs, plan) -> None:
    """The reference images and the settings of the scored run (see the module docstring)."""
    cfg, prompts = plan.cfg, plan.prompts
    given = sc.reference
    if sc.reference_set is not None:  # a folder or file, read by plan_images
        pass
    elif given is not None and (os.sep in given or given.lower().endswith((".json", ".jsonl"))):
        raise ConfigError(f"--reference {given!r}: no such folder or file")
    else:
        sc.reference_run = find_fp_run(cfg, prompts, given)
        if sc.reference_run is not None:
            sc.reference_set = _run_images(sc.reference_run, prompts)
    if sc.reference_set is None and plan.needs_fp_reference:
        need = sorted(n for n in plan.metric_names if getattr(_metric_cls(n), "needs_fp_reference", False))
        raise QBenchError(f"metrics {', '.join(need)} compare with full-precision images, and there is no stored fp run of {cfg.model} on "
                          f"{cfg.prompts} with seed {cfg.seed} in {cfg.db_path}: run `qbench run --model {cfg.model} --prompts {cfg.prompts}` "
                          f"first, pass --reference DIR_FP, or leave them out with --metrics")
    if sc.reference_set is not None and sc.reference_set.size != sc.images.size:
        (w, h), (rw, rh) = sc.images.size, sc.reference_set.size
        raise QBenchError(f"the images are {w}x{h} but the reference images ({sc.reference_set.source}) are {rw}x{rh}: "
                          "fidelity metrics compare pixel by pixel; score images made at the reference's resolution")
    if sc.reference_run is not None:
        sc.sampling = dict((sc.reference_run.get("result") or {}).get("sampling") or {})
        if sc.images.layout != "qbench":
            sc.warnings.append(f"the {sc.images.layout} layout does not record seeds: pairing with fp run {sc.reference_run['id'][-6:]} assumes the "
                               f"images were made with qbench's seed rule (--seed {cfg.seed} + prompt index)")
    else:
        from qbench.imagecache import sha

        w, h = sc.images.size
        sc.sampling = {"model": cfg.model, "weights": None, "prompts": cfg.prompts, "n_prompts": len(prompts),
                       "prompts_sha": sha([[p.id, p.text] for p in prompts]), "seed": cfg.seed, "steps": None, "guidance": None,
                       "resolution": w if w == h else f"{w}x{h}", "dtype": None, "device_type": None, "batch_size": None}


def _metric_cls(name: str):
    from qbench.catalog import METRICS

    return METRICS.get(name)


def find_fp_run(cfg, prompts, run: str | None = None) -> dict[str, Any] | None:
    """The stored ``fp`` run of ``cfg.model`` on these prompts (ids and texts) with ``cfg.seed``:
    ``run`` (an id, prefix or suffix) checked to be one, else the latest such run (an untagged one
    first); None when the store or such a run does not exist. QBenchError when ``run`` is not such
    a run, or when several such runs differ in their settings (name one)."""
    from qbench.comparison import SETTINGS, settings_diff
    from qbench.config import stable_hash
    from qbench.imagecache import sha
    from qbench.store import Store

    want = sha([[p.id, p.text] for p in prompts])

    def why_not(r) -> str | None:
        s = (r.get("result") or {}).get("sampling") or {}
        if r["status"] != "done":
            return f"it is {r['status']}"
        if r["model"] != cfg.model:
            return f"it is a {r['model']} run"
        if r["method"] != "fp":
            return f"it is a {r['label']} run, not fp"
        if s.get("prompts_sha") != want:
            return f"its prompts ({s.get('prompts')}) are not {cfg.prompts} (ids or texts differ)"
        if s.get("seed") != cfg.seed:
            return f"its seed is {s.get('seed')}, not {cfg.seed} (--seed)"
        return None

    if run is not None:
        if not os.path.exists(cfg.db_path):
            raise ConfigError(f"--reference {run!r}: neither a folder or file nor a run (no results database at {cfg.db_path})")
        r = Store(cfg.db_path, create=False).get(run)
        reason = why_not(r)
        if reason:
            raise ConfigError(f"--reference run {r['id']} cannot be the reference: {reason}")
        return r
    if not os.path.exists(cfg.db_path):
        return None
    cands = [r for r in Store(cfg.db_path, create=False).runs(model=cfg.model) if why_not(r) is None]
    if not cands:
        return None
    settings = {stable_hash({k: (r["result"]["sampling"]).get(k) for k in SETTINGS}): r for r in cands}
    if len(settings) > 1:
        a, b = list(settings.values())[:2]
        diff = "; ".join(settings_diff(*({k: x["result"]["sampling"].get(k) for k in SETTINGS} for x in (a, b))))
        raise QBenchError(f"{len(cands)} stored fp runs of {cfg.model} on {cfg.prompts} differ in their settings ({diff}): "
                          f"name the one the images were made like with --reference RUN (e.g. {a['id'][-6:]} or {b['id'][-6:]})")
    return max(cands, key=lambda r: (not (r.get("config") or {}).get("tag"), r["created"], r["id"]))


def _run_images(run: dict[str, Any], prompts):
    """The fp run's own image files (:func:`qbench.results_export.image_paths`), checked like any."""
    from qbench.results_export import image_paths
    from qbench.score_read import check_files

    files = {pid: f for pid, f in image_paths(run, prompts).items() if f and os.path.isfile(f)}
    where = (run.get("result") or {}).get("images_dir") or "?"
    try:
        return check_files(where, f"fp run {run['id'][-6:]}", None, files, prompts, "reference")
    except QBenchError as e:
        raise QBenchError(f"{e} (the fp run's image folder was cleaned? `qbench run` with its settings makes them again)") from None


def score_identity(plan, sc: ScoreInputs):
    """The :class:`~qbench.identity.Identity` of a scored run: its configuration (less where
    results go and the folder's path), the prompts, the model's spec, the images' and the
    reference's content digests, the metrics with their options, and the code and libraries of
    the readers and metrics."""
    import dataclasses

    from qbench.identity import METRIC_LIBRARIES, make, option_files
    from qbench.metrics.common import GLOBAL_OPTIONS

    cfg = plan.cfg
    opts = {k: v for k, v in cfg.method_options.items() if k != "source"}
    config = {k: v for k, v in cfg.to_dict().items() if k not in ("out_dir", "db", "method_options")}
    ref = sc.reference_set
    metric_modules = [_metric_cls(n).__module__ for n in plan.metric_names]
    declared = [o for n in plan.metric_names for o in _metric_cls(n).OPTIONS]
    return make("score", {
        "config": {**config, "method_options": opts},
        "prompts": [[p.id, p.index, p.text] for p in plan.prompts],
        "model": plan.spec.name, "spec": {k: v for k, v in dataclasses.asdict(plan.spec).items() if k != "description"},
        "images": {"layout": sc.images.layout, "entry": sc.images.entry, "digest": sc.images.digest},
        "reference": None if ref is None else {"layout": ref.layout, "digest": ref.digest,
                                               "run": sc.reference_run["id"] if sc.reference_run else None},
        "metrics": plan.metric_names, "metric_options": plan.metric_options,
    }, files={"images": sc.images.digest, **({"reference": ref.digest} if ref is not None else {}),
              **option_files(plan.metric_options, declared + list(GLOBAL_OPTIONS))},
        code={"read": ["qbench.score_read"], "metrics": metric_modules}, libraries=METRIC_LIBRARIES)


def reference_images(s) -> None:
    """The ``reference-images`` phase: the reference's images in prompt order ([] without one)."""
    from qbench.score_read import LazyImages

    sc: ScoreInputs = s.scored
    ids = [p.id for p in s.plan.prompts]
    s.references = LazyImages(sc.reference_set, ids) if sc.reference_set is not None and s.plan.needs_fp_reference else []
    if sc.reference_set is not None:
        s.reused["fp_references"] = {"key": sc.reference_set.digest, "kind": sc.reference_set.layout if sc.reference_run is None else "images"}


def read(s) -> None:
    """The ``read`` phase: the scored images in prompt order, decoded when a metric asks."""
    from qbench.score_read import LazyImages

    s.images = LazyImages(s.scored.images, [p.id for p in s.plan.prompts])
    s.reused["images"] = {"key": s.scored.images.digest, "kind": f"images made elsewhere ({s.scored.images.layout})"}


def build_scored_result(s):
    """The stored :class:`~qbench.runparts.RunResult` of a ``score`` sequence."""
    from qbench.measure import provenance, qbench_version
    from qbench.runparts import RunResult

    sc: ScoreInputs = s.scored
    cfg, plan, method, images = s.cfg, s.plan, s.plan.method, s.scored.images
    ref = sc.reference_set
    reference = ({"kind": "stored fp run", "run_id": sc.reference_run["id"], "images_dir": ref.source} if sc.reference_run
                 else {"kind": "folder or file", "source": ref.source, "layout": ref.layout, "digest": ref.digest} if ref is not None
                 else {"kind": "none", "why": "no stored fp run of these settings and no --reference"})
    seed_rule = (f"qbench's (--seed {cfg.seed} + prompt index), checked from the file names" if images.layout == "qbench"
                 else f"not recorded by the {images.layout} layout")
    notes = [f"{MADE_ELSEWHERE} ({images.source}, {images.layout} layout): latency, memory and size are n/a", *sc.warnings]
    if plan.spec.family.startswith("toy"):
        notes.append("TOY WORLD: synthetic 32x32 scenes, models and CLIP trained in this repo; numbers do not transfer to real images")
    result = RunResult(
        run_id=s.run_id, config=cfg.to_dict(), label=method.label, mode=method.mode, bits=None,
        model_source=f"images made elsewhere: {images.source}", method=method.describe(),
        method_report={"scored_from": images.describe(), "reference": reference, "seed_rule": seed_rule},
        metrics={k: v.to_dict() for k, v in s.metrics.items()},
        latency={"kind": NA}, memory={"kind": NA, "measured_during": "nothing (no generation)"},
        model_bytes=0, size={"deploy_bytes": None, "deploy_kind": NA}, timings=s.timings,
        n_images=len(images.files), n_generated=0, images_dir=os.path.dirname(images.source) if os.path.isfile(images.source) else images.source,
        provenance=dict(provenance(plan.ref.device), qbench=qbench_version(), scored=MADE_ELSEWHERE, dtype=None),
        notes=notes, sampling=sc.sampling, identity=s.identity.record(),
        reused={k: {"key": v["key"], "kind": v["kind"]} for k, v in s.reused.items()},
    )
    result.timings["total_s"] = sum(v for k, v in s.timings.items() if k.endswith("_s") and k != "total_s")
    result.image_files = dict(images.files)
    return result
