"""Quantized pipelines that leave qbench: ``qbench export`` and :func:`load_quantized`.

    qbench export --method naive --bits W4A8 --mode kernel --model toy-flux OUT/
    pipe = qbench.load_quantized("OUT")            # the same images, byte for byte

:func:`export` runs the method exactly as ``qbench run`` does (preflight :func:`~qbench.preflight.plan_run`,
load, ``prepare -> calibrate -> convert`` with the run's calibration context) and writes the
converted pipeline with :func:`save_quantized`. The folder is a diffusers pipeline folder:

    OUT/model_index.json           diffusers' index; a quantized component is named
                                   ["qbench.quant.serialize", "QBenchQuantized"]
    OUT/scheduler/                 the scheduler as saved by diffusers (a Q-Sched scheduler keeps
                                   its coefficients in scheduler_config.json)
    OUT/vae/, text_encoder/, ...   the unquantized components, saved by their own save_pretrained
    OUT/<denoiser>/                config.json, qbench_quantized.safetensors (packed weights,
                                   scales, other tensors), qbench_quant_config.json (per layer:
                                   LayerSpec, shapes, stored tensors) — :mod:`qbench.quant.serialize`
    OUT/qbench_export.json         provenance: qbench version, source model and weights, the
                                   method's describe() and report, sampling defaults, sizes,
                                   calibration prompts, and the imports a plain diffusers load needs

Plain diffusers (``qbench_export.json`` names the imports; the second only for a Q-Sched export)::

    import qbench.quant.serialize, qbench.methods.qsched_scheduler  # noqa: F401
    pipe = DiffusionPipeline.from_pretrained("OUT")

Everything is written into a temporary sibling folder and renamed into place, so ``OUT`` is never
half-written. A component holding a module with forward hooks or pre-hooks is refused before
anything is written (:func:`check_no_hooks`): the folder keeps tensors and configs, never Python
hooks, so it would reload as another model. A method whose layers are not qbench's declares ``exportable=False`` (and
``export_hint``, what to use instead) in its :class:`~qbench.api.Capabilities`; :func:`export`
refuses it before loading anything. ``OUT`` must not exist or be empty; ``force`` replaces an earlier export (a folder
holding ``qbench_export.json``), never any other folder.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
import warnings
from typing import Any, Callable

from qbench.errors import ConfigError, QBenchError
from qbench.fsutil import _read_umask

FORMAT = "qbench-export"
VERSION = 1
INDEX_FILE = "qbench_export.json"


def _check_out(out: str, force: bool) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise QBenchError(f"{out} exists and is not a folder")
    if os.path.isdir(out) and os.listdir(out):
        if not force:
            raise QBenchError(f"{out} exists and is not empty: choose a new folder, or pass --force (force=True) to replace an earlier export")
        if not os.path.isfile(os.path.join(out, INDEX_FILE)):
            raise QBenchError(f"{out} is not empty and is not a qbench export (no {INDEX_FILE}): --force replaces earlier exports only")


def _components(pipe) -> dict[str, Any]:
    comps = getattr(pipe, "components", None)
    if not isinstance(comps, dict):
        raise QBenchError(f"expected a diffusers pipeline, got {type(pipe).__name__}")
    return comps


def quantized_components(pipe) -> list[str]:
    """Names of the pipeline's components that hold qbench-quantized layers."""
    from torch import nn

    from qbench.quant.api import quant_layers

    return [n for n, c in _components(pipe).items() if isinstance(c, nn.Module) and quant_layers(c)]


def check_no_hooks(pipe) -> None:
    """Raise QBenchError (one line) when a module of any of the pipeline's components carries
    forward hooks or forward pre-hooks (``register_forward_hook`` / ``register_forward_pre_hook``):
    an export stores tensors and configs, not Python hooks, so the folder would reload as a model
    that computes without them (a hook-based method exported this way gave other images: 201/255
    max pixel difference)."""
    from torch import nn

    for cname, comp in _components(pipe).items():
        if not isinstance(comp, nn.Module):
            continue
        for mname, m in comp.named_modules():
            hooks = list(m._forward_pre_hooks.values()) + list(m._forward_hooks.values())
            if hooks:
                what = ", ".join(sorted({getattr(h, "__qualname__", type(h).__name__) for h in hooks}))
                raise QBenchError(f"{cname}.{mname or '(root)'} carries {len(hooks)} forward hook(s) or pre-hook(s) ({what}) that an export cannot "
                                  "save: it would reload as a different model; remove them, or make the layers compute it (e.g. an input "
                                  "pre-scale: qbench.quant.api.quantize_(..., pre_scales=...))")


def save_quantized(pipe, out: str, *, meta: dict[str, Any] | None = None, force: bool = False) -> dict[str, Any]:
    """Write ``pipe`` (a diffusers pipeline holding qbench-quantized layers) to the folder ``out``
    (layout: the module docstring); returns the index written to ``qbench_export.json``
    (``meta`` is merged into it). Raises QBenchError when nothing is quantized, a component
    carries forward hooks (:func:`check_no_hooks`) or ``out`` is taken."""
    from qbench.quant import serialize

    out = os.path.abspath(out)
    _check_out(out, force)
    names = quantized_components(pipe)
    if not names:
        raise QBenchError("the pipeline holds no qbench-quantized layer: nothing to export (an unquantized pipeline saves with save_pretrained)")
    check_no_hooks(pipe)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=parent)
    os.chmod(tmp, 0o777 & ~_read_umask())  # what os.makedirs would give, not mkdtemp's 0o700
    try:
        comps = _components(pipe)
        summary: dict[str, Any] = {}
        for name, comp in comps.items():
            if comp is None:
                continue
            folder = os.path.join(tmp, name)
            if name in names:
                qcfg = serialize.save_component(comp, folder)
                summary[name] = {"class": qcfg["class"], "dtype": qcfg["dtype"], "quantized_layers": len(qcfg["layers"]),
                                 "modes": sorted({lc["spec"]["mode"] for lc in qcfg["layers"].values()}),
                                 "bytes": os.path.getsize(os.path.join(folder, serialize.TENSORS_FILE))}
            else:
                _save_plain(comp, folder)
        pipe.save_config(tmp)  # model_index.json, then the quantized components point at the loader
        index_path = os.path.join(tmp, "model_index.json")
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        for name in names:
            index[name] = list(serialize.LOADER)
        with open(index_path, "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2, sort_keys=True)
        imports = [serialize.LOADER[0]] + sorted({v[0] for k, v in index.items() if isinstance(v, list) and v and isinstance(v[0], str)
                                                  and v[0].startswith("qbench.") and v[0] != serialize.LOADER[0]})
        from importlib import metadata

        doc = {
            "format": FORMAT,
            "version": VERSION,
            "qbench": metadata.version("qbench"),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "pipeline": type(pipe).__name__,
            "dtype": str(pipe.dtype).replace("torch.", ""),
            "quantized_components": summary,
            "imports": imports,
            "load": {"qbench": f"qbench.load_quantized({out!r})",
                     "diffusers": f"import {', '.join(imports)}; pipe = DiffusionPipeline.from_pretrained({out!r})"},
            **(meta or {}),
        }
        with open(os.path.join(tmp, INDEX_FILE), "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, default=str)
        if os.path.isdir(out):
            old = out + f".old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        return doc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _save_plain(comp, folder: str) -> None:
    """An unquantized component, by its own ``save_pretrained`` (safetensors where it can)."""
    import inspect

    save = getattr(comp, "save_pretrained", None)
    if save is None:
        raise QBenchError(f"cannot save a {type(comp).__name__}: it has no save_pretrained")
    kw = {"safe_serialization": True} if "safe_serialization" in inspect.signature(save).parameters else {}
    save(folder, **kw)


def read_index(path: str) -> dict[str, Any]:
    """``qbench_export.json`` of an export folder; QBenchError if ``path`` is not an export."""
    if not os.path.isdir(path):
        raise QBenchError(f"{path} is not a folder (load_quantized takes the folder `qbench export` wrote)")
    from qbench.quant.serialize import read_format_json

    return read_format_json(os.path.join(path, INDEX_FILE), FORMAT, VERSION, f"{path} is not a qbench export (no {INDEX_FILE}); `qbench export` writes one")


def allowed_imports() -> set[str]:
    """The modules an export may name (``imports`` in ``qbench_export.json``, a component's library
    in ``model_index.json``), exactly what :func:`save_quantized` can write: the quantized-component
    loader (:data:`qbench.quant.serialize.LOADER`) and the ``export_module`` of each registered method
    that exports its own classes (e.g. a scheduler; ``qbench/catalog.py``). Nothing else is imported:
    ``qbench.__main__`` would run the command line inside the caller (issue 23 §1)."""
    from qbench.catalog import METHODS
    from qbench.quant.serialize import LOADER

    return {LOADER[0]} | {e.meta["export_module"] for e in METHODS if e.meta.get("export_module")}


#: libraries diffusers may import for a component of an export (besides :func:`allowed_imports`)
COMPONENT_LIBRARIES = ("diffusers", "transformers")


def _check_model_index(path: str, allowed: set[str]) -> None:
    """Refuse a ``model_index.json`` whose components name a library outside diffusers,
    transformers and :func:`allowed_imports`: diffusers imports whatever library it names."""
    from qbench.fsutil import read_json_file

    index = read_json_file(os.path.join(path, "model_index.json"), what="the export's model_index.json")
    if not isinstance(index, dict):
        raise QBenchError(f"{path}/model_index.json is not a JSON object")
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list):
            continue
        lib = value[0] if value else None
        if lib is not None and lib not in COMPONENT_LIBRARIES and lib not in allowed:
            raise QBenchError(f"{path}/model_index.json: component {name!r} names the library {str(lib)[:80]!r}; "
                              f"an export may use only {', '.join(COMPONENT_LIBRARIES + tuple(sorted(allowed)))}")


def load_quantized(path: str, *, device: str | None = None, torch_dtype=None):
    """The pipeline exported to ``path``: diffusers' ``DiffusionPipeline.from_pretrained`` with
    the quantized components rebuilt by :mod:`qbench.quant.serialize` (no float weight of a
    quantized layer is read) and the modules the index names imported first (only ``qbench.*``).

    ``torch_dtype`` defaults to the exported dtype (which reproduces the exported pipeline's
    images exactly); ``device`` moves it after loading. Raises QBenchError for a folder that is
    not an export or whose files do not match their recorded checksums."""
    import importlib

    import diffusers
    import torch

    doc = read_index(path)
    allowed = allowed_imports()
    imports = doc.get("imports", [])
    if not isinstance(imports, list):
        raise QBenchError(f"{path}/{INDEX_FILE}: 'imports' must be a list of module names, got {type(imports).__name__}")
    _check_model_index(path, allowed)
    for mod in imports:
        if not isinstance(mod, str) or mod not in allowed:
            raise QBenchError(f"{path}/{INDEX_FILE} names the import {str(mod)[:80]!r}: an export may import only {', '.join(sorted(allowed))}")
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise QBenchError(f"{path} needs {mod}, which this qbench does not have: {e}") from None
    dtype = torch_dtype or getattr(torch, str(doc.get("dtype") or "float32"))
    try:
        with warnings.catch_warnings():  # diffusers >= 0.36 prefers `dtype`, older ones know only `torch_dtype`
            warnings.filterwarnings("ignore", category=FutureWarning)
            pipe = diffusers.DiffusionPipeline.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as e:
        raise QBenchError(f"could not load the export {path}: {str(e).splitlines()[0]}") from None
    if device is not None:
        pipe.to(device)
    from qbench.quant.api import guard_pipeline_save

    return guard_pipeline_save(pipe)


def export(cfg, out: str, *, force: bool = False, show_progress: bool = True, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Quantize the model of ``cfg`` (a :class:`~qbench.config.RunConfig`) with its method as
    ``qbench run`` would, and write it to ``out`` with :func:`save_quantized`. Returns the export
    index. Nothing is generated or stored besides what the method's calibration writes (e.g. a
    Q-Sched checkpoint under ``cfg.out_dir``)."""
    from qbench.measure import provenance
    from qbench.phases import RunState, run_phases
    from qbench.quant.api import size_report

    say = log or (lambda msg: None)
    _check_out(os.path.abspath(out), force)  # before anything heavy; checked again when writing

    def refuse(state: RunState) -> None:  # after the plan, before anything loads
        method = state.plan.method
        if not method.uses_bits:
            raise ConfigError(f"method {method.name!r} does not quantize: nothing to export (save the original pipeline with save_pretrained)")
        caps = method.capabilities
        if not caps.exportable:
            raise ConfigError(f"method {method.name!r} does not make qbench-quantized layers: `qbench export` writes those only ({caps.export_hint})")
        if state.plan.calibration:
            say(f"calibrating first on {state.plan.calib_spec}: {state.plan.calibration['images']} images ({state.plan.calibration['what']})")

    state = run_phases(RunState(cfg.replace(metrics=[]), show_progress=show_progress, say=say, record=False), "export", after_plan=refuse)
    plan, cfg, method, model = state.plan, state.cfg, state.plan.method, state.model
    if not quantized_components(model.pipe):
        raise QBenchError(f"{method.label} left no qbench-quantized layer in the pipeline: nothing to export")
    size = size_report(model.denoiser)
    meta = {
        "dtype": str(model.dtype).replace("torch.", ""),
        "source": {"model": cfg.model, "weights": model.source, "fingerprint": model.fingerprint, "model_path": cfg.model_path},
        "method": method.describe(),
        "label": method.label,
        "report": method.report(),
        "denoiser": model.spec.denoiser,
        "denoiser_size": size,
        "sampling": {"steps": cfg.steps or model.spec.steps, "guidance": model.spec.guidance if cfg.guidance is None else cfg.guidance,
                     "resolution": cfg.resolution or model.spec.resolution, "call_kwargs": model.spec.call_kwargs},
        "calibration": {"prompts": plan.calib_spec, "prompt_ids": [p.id for p in plan.calib_prompts]} if plan.calib_prompts else {},
        "exported_with": {k: v for k, v in provenance(model.device).items() if k in ("device", "device_name", "git", "versions")},
        "run_config": cfg.to_dict(),
        "identity": state.identity.record(),
    }
    doc = save_quantized(model.pipe, out, meta=meta, force=force)
    say(f"exported {method.label} of {cfg.model} to {os.path.abspath(out)}")
    return doc
