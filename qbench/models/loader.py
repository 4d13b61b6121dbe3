"""Load a registered model as a diffusers pipeline: hub id, local folder, tiny twin or shipped toy weights.

All four kinds go through ``<PipelineClass>.from_pretrained(dir_or_id, ...)``; the scheduler is
then rebuilt from the loaded config with the model's overrides (docs/conventions.md) and, for PCM,
the LoRA is loaded, fused and unloaded so the denoiser holds plain Linear/Conv layers.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qbench.errors import MissingWeightsError, QBenchError
from qbench.models.base import LoadedModel, ModelSpec, cache_root

if TYPE_CHECKING:  # pragma: no cover
    import torch

TINY_VERSION = "v1"  # the tiny twins' folder also carries the digest of their builder's code
#: imports that cannot change a pixel: the quantizer's API guards save_pretrained (qbench.identity)
NOT_NUMERIC_IMPORTS = ("qbench.quant.api",)


def get_spec(name: str) -> ModelSpec:
    from qbench.catalog import MODELS

    return MODELS.get(name)


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QBenchError(f"device {device!r} requested but CUDA is not available on this machine")
    if device.startswith("cuda:") and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise QBenchError(f"device {device!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise QBenchError("device 'mps' requested but Apple MPS is not available on this machine")
    return device


def resolve_dtype(spec: ModelSpec, device: str, dtype: str | None = None) -> "torch.dtype":
    import torch

    name = dtype or (spec.dtype if device != "cpu" else spec.cpu_dtype)
    try:
        dt = getattr(torch, name)
    except AttributeError:
        raise QBenchError(f"unknown dtype {name!r}; use float32, float16 or bfloat16") from None
    if not isinstance(dt, torch.dtype):
        raise QBenchError(f"unknown dtype {name!r}; use float32, float16 or bfloat16")
    return dt


@contextlib.contextmanager
def _file_lock(path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def tiny_twin_dir(spec: ModelSpec) -> str:
    """Build the tiny twin once (seeded random weights) and return its folder; concurrent
    callers wait on a lock, and a half-written build is never visible (tmp dir + rename)."""
    from qbench.registry import Entry

    from qbench.identity import code_digest

    root = os.path.join(cache_root(), "tiny")
    builder = spec.tiny_builder.partition(":")[0] if isinstance(spec.tiny_builder, str) else spec.tiny_builder.__module__
    final = os.path.join(root, f"{spec.name}-{TINY_VERSION}-{code_digest([builder])[:10]}")  # a changed builder builds anew
    if os.path.exists(os.path.join(final, "model_index.json")):
        return final
    with _file_lock(final + ".lock"):
        if os.path.exists(os.path.join(final, "model_index.json")):
            return final
        tmp = tempfile.mkdtemp(prefix=f".{spec.name}-", dir=root)
        try:
            Entry(spec.name, spec.tiny_builder, "").load()(tmp)
            shutil.rmtree(os.path.join(tmp, "_tok"), ignore_errors=True)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _locate(spec: ModelSpec, model_path: str | None) -> tuple[str, bool, str]:
    """-> (path or hub id, local_files_only, provenance string)."""
    if model_path:
        if not os.path.isfile(os.path.join(model_path, "model_index.json")):
            raise MissingWeightsError(f"--model-path {model_path!r} is not a diffusers folder (no model_index.json)")
        return model_path, True, f"path:{os.path.abspath(model_path)}"
    if spec.local_dir:
        import qbench

        path = os.path.join(os.path.dirname(qbench.__file__), spec.local_dir)
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            raise MissingWeightsError(f"shipped weights of {spec.name!r} are missing at {path}; reinstall qbench")
        return path, True, f"shipped:{spec.local_dir}"
    if spec.tiny_builder:
        return tiny_twin_dir(spec), True, f"random tiny twin (seed 0, {TINY_VERSION})"
    assert spec.hub_id
    from huggingface_hub import snapshot_download

    try:
        snap = snapshot_download(spec.hub_id, revision=spec.revision, local_files_only=True)
    except Exception:  # not in the local HF cache
        if _hub_offline():
            raise MissingWeightsError(
                f"model {spec.name!r} needs the weights of {spec.hub_id} and the hub is offline: "
                f"download them on a connected machine (`hf download {spec.hub_id}`) into the HF cache, "
                f"or pass --model-path DIR with a local diffusers copy"
            ) from None
        return spec.hub_id, False, f"hub:{spec.hub_id}@{spec.revision or 'main'}"
    rev = os.path.basename(snap.rstrip("/"))
    return snap, True, f"hub:{spec.hub_id}@{rev}"


@dataclass(frozen=True)
class ModelRef:
    """A model located but not loaded: what the preflight checks and the image cache keys on."""

    spec: ModelSpec
    where: str  # folder or hub id
    local_only: bool
    source: str
    device: str
    dtype: "torch.dtype"
    fingerprint: str | None


def locate_model(name: str, *, model_path: str | None = None, device: str = "auto", dtype: str | None = None) -> ModelRef:
    """Resolve a model's weights, device and dtype without loading it (raises one-line errors:
    unknown model, missing weights offline, a --model-path of another pipeline class, no CUDA)."""
    spec = get_spec(name)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(spec, device, dtype)
    where, local_only, source = _locate(spec, model_path)
    fingerprint = None
    if local_only and not source.startswith("hub:"):
        from qbench.imagecache import weights_fingerprint

        fingerprint = weights_fingerprint(where)
    if local_only:
        _check_pipeline_class(spec, where, model_path)
    return ModelRef(spec, where, local_only, source, device, torch_dtype, fingerprint)


def prequantized(ref: ModelRef) -> str | None:
    """What makes the weights at ``ref`` already quantized, or None: a ``qbench export`` folder
    (``qbench_export.json``, components loaded by qbench's quantized loader) or a component whose
    ``config.json`` carries a ``quantization_config`` (diffusers' quantization backends). Such a
    model is not full precision: it must not become a run's full-precision baseline, and
    quantizing it again measures the second quantization only."""
    import json

    if not ref.local_only:
        return None
    if os.path.isfile(os.path.join(ref.where, "qbench_export.json")):
        return "a qbench export (qbench_export.json)"
    try:
        with open(os.path.join(ref.where, "model_index.json"), encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict):
        return None
    for name, entry in sorted(index.items()):
        if isinstance(entry, list) and entry and entry[0] == "qbench.quant.serialize":
            return f"component {name!r} is qbench-quantized"
        cfg_path = os.path.join(ref.where, name, "config.json")
        if isinstance(entry, list) and os.path.isfile(cfg_path):
            try:
                with open(cfg_path, encoding="utf-8") as f:
                    qc = json.load(f).get("quantization_config")
            except (OSError, ValueError, AttributeError):
                continue
            if qc:
                how = qc.get("quant_method") if isinstance(qc, dict) else None
                return f"component {name!r} carries a quantization_config ({how or 'unknown backend'})"
    return None


def _check_pipeline_class(spec: ModelSpec, where: str, model_path: str | None) -> None:
    import json

    try:
        with open(os.path.join(where, "model_index.json"), encoding="utf-8") as f:
            found = json.load(f).get("_class_name")
    except (OSError, ValueError, AttributeError) as e:
        raise MissingWeightsError(f"{where}/model_index.json is unreadable: {e}") from None
    if found and found != spec.pipeline_class:
        how = f"--model-path {model_path}" if model_path else where
        raise QBenchError(f"{how} holds a {found}, but model {spec.name!r} is a {spec.pipeline_class}; pass the weights of a {spec.name} model (or pick the model that matches them)")


def scheduler_config(ref: ModelRef) -> dict[str, Any] | None:
    """The model's scheduler config with qbench's overrides, read from disk (None for a hub id
    that is not downloaded yet)."""
    import json

    path = os.path.join(ref.where, "scheduler", "scheduler_config.json")
    if not ref.local_only or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    cfg.update(ref.spec.scheduler_config)
    return cfg


def check_steps(ref: ModelRef, steps: int) -> None:
    """Refuse a step count the model's scheduler cannot run, naming its limit (instead of
    diffusers' message about ``strength`` after the model is loaded)."""
    import diffusers

    cfg = scheduler_config(ref)
    if cfg is None:
        return
    sched = getattr(diffusers, ref.spec.scheduler_class).from_config(cfg)

    def ok(n: int) -> bool:
        try:
            sched.set_timesteps(n)
            return True
        except ValueError:
            return False

    if ok(steps):
        return
    lo, hi = 0, steps  # largest n that works: ok(lo) (or lo = 0), not ok(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    raise QBenchError(f"--steps {steps}: the {ref.spec.scheduler_class} of {ref.spec.name!r} runs at most {lo} steps")


def load_model(name: str, *, model_path: str | None = None, device: str = "auto", dtype: str | None = None, ref: ModelRef | None = None) -> LoadedModel:
    import diffusers

    ref = ref or locate_model(name, model_path=model_path, device=device, dtype=dtype)
    spec, where, local_only = ref.spec, ref.where, ref.local_only
    pipe_cls = getattr(diffusers, spec.pipeline_class)
    try:
        pipe = pipe_cls.from_pretrained(where, torch_dtype=ref.dtype, local_files_only=local_only)
    except OSError as e:
        raise MissingWeightsError(f"could not load {spec.name!r} from {where}: {str(e).splitlines()[0]}") from None
    sched_cls = getattr(diffusers, spec.scheduler_class)
    pipe.scheduler = sched_cls.from_config(pipe.scheduler.config, **spec.scheduler_config)
    if spec.lora:
        _fuse_lora(pipe, spec, where, local_only)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(ref.device)
    from qbench.quant.api import guard_pipeline_save

    guard_pipeline_save(pipe)  # save_pretrained refuses up front once a method has quantized a component
    return LoadedModel(spec=spec, pipe=pipe, source=ref.source, device=ref.device, dtype=ref.dtype, fingerprint=ref.fingerprint,
                       where=where)


def _fuse_lora(pipe, spec: ModelSpec, where: str, local_only: bool) -> None:
    lora = dict(spec.lora or {})
    repo = where if lora.get("repo") == "@local" else lora["repo"]
    try:
        pipe.load_lora_weights(repo, weight_name=lora.get("weight_name"), subfolder=lora.get("subfolder"), local_files_only=local_only)
    except (OSError, ValueError) as e:
        raise MissingWeightsError(
            f"LoRA of {spec.name!r} ({lora.get('repo')}/{lora.get('subfolder')}/{lora.get('weight_name')}) "
            f"could not be loaded: {str(e).splitlines()[0]}"
        ) from None
    pipe.fuse_lora()
    pipe.unload_lora_weights()
