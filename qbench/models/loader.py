"""Load a registered model as a diffusers pipeline: hub id, local folder, tiny twin or shipped toy weights.

All four kinds go through ``<PipelineClass>.from_pretrained(dir_or_id, ...)``; the scheduler is
then rebuilt from the loaded config with the model's overrides (DESIGN.md §2.1) and, for PCM,
the LoRA is loaded, fused and unloaded so the denoiser holds plain Linear/Conv layers.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from typing import TYPE_CHECKING

from qbench.errors import MissingWeightsError, QBenchError
from qbench.models.base import LoadedModel, ModelSpec, cache_root

if TYPE_CHECKING:  # pragma: no cover
    import torch

TINY_VERSION = "v1"  # bump when a tiny builder changes, so stale caches are rebuilt


def get_spec(name: str) -> ModelSpec:
    from qbench.catalog import MODELS

    return MODELS.get(name)


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QBenchError(f"device {device!r} requested but CUDA is not available on this machine")
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

    root = os.path.join(cache_root(), "tiny")
    final = os.path.join(root, f"{spec.name}-{TINY_VERSION}")
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


def load_model(name: str, *, model_path: str | None = None, device: str = "auto", dtype: str | None = None) -> LoadedModel:
    import diffusers

    spec = get_spec(name)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(spec, device, dtype)
    where, local_only, source = _locate(spec, model_path)
    pipe_cls = getattr(diffusers, spec.pipeline_class)
    try:
        pipe = pipe_cls.from_pretrained(where, torch_dtype=torch_dtype, local_files_only=local_only)
    except OSError as e:
        raise MissingWeightsError(f"could not load {spec.name!r} from {where}: {str(e).splitlines()[0]}") from None
    sched_cls = getattr(diffusers, spec.scheduler_class)
    pipe.scheduler = sched_cls.from_config(pipe.scheduler.config, **spec.scheduler_config)
    if spec.lora:
        _fuse_lora(pipe, spec, where, local_only)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    fingerprint = None
    if local_only and not source.startswith("hub:"):
        from qbench.imagecache import weights_fingerprint

        fingerprint = weights_fingerprint(where)
    return LoadedModel(spec=spec, pipe=pipe, source=source, device=device, dtype=torch_dtype, fingerprint=fingerprint)


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
