"""Saving and loading one quantized pipeline component (a denoiser, a text encoder, a VAE).

A component folder written by :func:`save_component` holds

* ``config.json`` — the component's own config (diffusers ``save_config`` / transformers
  ``config.save_pretrained``), so its class can be built without weights;
* ``qbench_quantized.safetensors`` — every stored tensor: the quantized layers' packed buffers
  (kernel mode: ``qweight`` + ``s1``/``sg`` or ``scale``/``zero``; simulate mode: the
  fake-quantized ``weight``), their ``bias`` and static activation ``a_scale``/``a_zero``, and
  the component's other parameters and buffers, in the dtypes they had in memory;
* ``qbench_quant_config.json`` — format and version, the component's library and class, its
  dtype, the sha256 of the tensor file, tied tensors (``aliases``) and per quantized layer its
  :meth:`~qbench.quant.linear._QuantCore.to_config` (type, LayerSpec, shapes, stored tensors).

:func:`load_component` builds the class from ``config.json`` with its parameters on the meta
device (``accelerate.init_empty_weights``: no float weight of a quantized layer is ever made or
read), puts :meth:`~qbench.quant.linear._QuantCore.from_state` layers in, then assigns the stored
tensors (strict: a missing or unexpected tensor is an error). The result computes exactly what
the saved component computed (same tensors, same code).

:class:`QBenchQuantized` is the name ``model_index.json`` gives such a component: diffusers'
``DiffusionPipeline.from_pretrained`` calls its ``from_pretrained`` once this module has been
imported (diffusers resolves a library it does not know from ``sys.modules`` only)::

    import qbench.quant.serialize  # noqa: F401  (the loader of quantized components)
    pipe = DiffusionPipeline.from_pretrained("OUT")
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch
from diffusers import ModelMixin
from torch import nn

from qbench.errors import QBenchError
from qbench.fsutil import atomic_write, atomic_write_text, sha256_file

FORMAT = "qbench-quantized-component"
VERSION = 1
CONFIG_FILE = "qbench_quant_config.json"
TENSORS_FILE = "qbench_quantized.safetensors"
LOADER = ("qbench.quant.serialize", "QBenchQuantized")  # the model_index.json entry of a quantized component
LIBRARIES = ("diffusers", "transformers")


def _quant_layers(module: nn.Module):
    from qbench.quant.linear import _QuantCore

    return [(n, m) for n, m in module.named_modules() if isinstance(m, _QuantCore)]


def _library(module: nn.Module) -> str:
    lib = type(module).__module__.split(".")[0]
    if lib not in LIBRARIES:
        raise QBenchError(f"cannot save a {type(module).__name__} ({type(module).__module__}): only diffusers and transformers components are supported")
    return lib


def save_component(module: nn.Module, folder: str) -> dict[str, Any]:
    """Write ``module`` (holding qbench-quantized layers) to ``folder``; returns its quant config
    (the JSON written). Tensors sharing storage (tied weights) are stored once and recorded as
    aliases. Raises QBenchError for a component of another library or without quantized layers."""
    from safetensors.torch import save_file

    from qbench.quant.linear import state_dict_allowed

    lib = _library(module)
    layers = _quant_layers(module)
    if not layers:
        raise QBenchError(f"{type(module).__name__} holds no qbench-quantized layer")
    os.makedirs(folder, exist_ok=True)
    if lib == "diffusers":
        module.save_config(folder)
    else:
        module.config.save_pretrained(folder)
    with state_dict_allowed():
        state = module.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple, str] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key in first and t.numel():
            aliases[name] = first[key]
            continue
        first[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    path = os.path.join(folder, TENSORS_FILE)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", "qbench": FORMAT}))
    floats = [t.dtype for t in state.values() if t.is_floating_point()]
    qcfg = {
        "format": FORMAT,
        "version": VERSION,
        "library": lib,
        "class": type(module).__name__,
        "dtype": str(max(set(floats), key=floats.count)).replace("torch.", "") if floats else None,
        "tensors_file": TENSORS_FILE,
        "tensors_sha256": sha256_file(path),
        "aliases": aliases,
        "layers": {n: m.to_config() for n, m in layers},
    }
    atomic_write_text(os.path.join(folder, CONFIG_FILE), json.dumps(qcfg, indent=1))
    return qcfg


def read_format_json(path: str, fmt: str, version: int, missing: str) -> dict[str, Any]:
    """A JSON object whose ``format`` is ``fmt`` and ``version`` is ``version``; QBenchError
    (``missing`` when the file does not exist) otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise QBenchError(missing) from None
    except (OSError, ValueError) as e:
        raise QBenchError(f"{path} is unreadable: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise QBenchError(f"{path} is not a {fmt} file")
    if doc.get("version") != version:
        raise QBenchError(f"{path} has {fmt} format version {doc.get('version')!r}; this qbench reads version {version}")
    return doc


def read_config(folder: str) -> dict[str, Any]:
    """The quant config of a component folder; QBenchError if it is not one qbench wrote."""
    path = os.path.join(folder, CONFIG_FILE)
    qcfg = read_format_json(path, FORMAT, VERSION, f"{folder} is not a qbench-quantized component (no {CONFIG_FILE})")
    if qcfg.get("library") not in LIBRARIES:
        raise QBenchError(f"{path}: unknown library {qcfg.get('library')!r}")
    return qcfg


def _build_empty(qcfg: dict[str, Any], folder: str) -> nn.Module:
    """The component's class built from its config, parameters on the meta device (buffers real,
    as a constructor makes them)."""
    import importlib

    from accelerate import init_empty_weights

    lib = importlib.import_module(qcfg["library"])
    cls = getattr(lib, qcfg["class"], None)
    if cls is None:
        raise QBenchError(f"{folder}: {qcfg['library']} has no class {qcfg['class']!r} (installed {qcfg['library']} {lib.__version__})")
    with init_empty_weights(include_buffers=False):
        if qcfg["library"] == "diffusers":
            return cls.from_config(cls.load_config(folder))
        return cls._from_config(cls.config_class.from_pretrained(folder))


def _tensors_name(folder: str, name: Any) -> str:
    """``tensors_file`` must be a plain file name inside the component folder: no separator, no
    ``..``, not absolute, and not a symlink leading out of the folder (issue 23 §1)."""
    bad = not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or os.path.isabs(name)
    if not bad:
        real = os.path.realpath(os.path.join(folder, name))
        bad = os.path.dirname(real) != os.path.realpath(folder)
    if bad:
        raise QBenchError(f"{folder}/{CONFIG_FILE}: tensors_file {str(name)[:80]!r} must be a file name inside the component folder")
    return name


def load_component(folder: str, torch_dtype: torch.dtype | None = None) -> nn.Module:
    """The component saved in ``folder`` by :func:`save_component`, on the CPU, in eval mode.

    ``torch_dtype`` (default, or the recorded dtype: the stored dtypes, which reproduce the saved
    component exactly) casts the floating-point parameters and buffers of non-quantized modules,
    and the float weight and bias of quantized layers; integer codes and float32 scales are kept
    as stored.
    Raises QBenchError for a folder that is not such a component, a tensor file that does not
    match its recorded sha256, or tensors that do not fit the component."""
    from safetensors.torch import load_file

    from qbench.quant.linear import QuantConv2d, QuantLinear, _QuantCore

    qcfg = read_config(folder)
    path = os.path.join(folder, _tensors_name(folder, qcfg.get("tensors_file") or TENSORS_FILE))
    if not os.path.isfile(path):
        raise QBenchError(f"{folder}: the tensor file {os.path.basename(path)} is missing")
    if sha256_file(path) != qcfg.get("tensors_sha256"):
        raise QBenchError(f"{path} does not match the sha256 recorded in {CONFIG_FILE}: the file was changed or is incomplete")
    state = load_file(path)
    for alias, name in qcfg["aliases"].items():
        if name not in state:
            raise QBenchError(f"{folder}: alias {alias!r} names a tensor {name!r} that is not stored")
        state[alias] = state[name]
    module = _build_empty(qcfg, folder)
    for name, lc in qcfg["layers"].items():
        parent_name, _, attr = name.rpartition(".")
        try:
            parent = module.get_submodule(parent_name) if parent_name else module
            old = getattr(parent, attr)
        except AttributeError:
            raise QBenchError(f"{folder}: quantized layer {name!r} is not a module of {qcfg['class']}") from None
        want = QuantConv2d if lc.get("type") == "conv2d" else QuantLinear
        base = nn.Conv2d if want is QuantConv2d else nn.Linear
        if not isinstance(old, base):
            raise QBenchError(f"{folder}: {name!r} is a {type(old).__name__} in {qcfg['class']}, the export has a quantized {base.__name__}")
        sub = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".") and "." not in k[len(name) + 1:]}
        try:
            setattr(parent, attr, want.from_state(lc, sub))
        except QBenchError as e:
            raise QBenchError(f"{folder}: layer {name!r}: {e}") from None
    result = module.load_state_dict(state, strict=False, assign=True)
    problems = [f"missing {k}" for k in result.missing_keys] + [f"unexpected {k}" for k in result.unexpected_keys]
    left = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.device.type == "meta"]
    problems += [f"not loaded {n}" for n in left if f"missing {n}" not in problems]
    if problems:
        raise QBenchError(f"{folder}: the stored tensors do not fit {qcfg['class']}: {', '.join(problems[:5])}" + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))
    if torch_dtype is not None and str(torch_dtype).replace("torch.", "") != qcfg.get("dtype"):
        _cast_floats(module, torch_dtype, _QuantCore)
    module.eval()
    module.requires_grad_(False)
    return module


def _cast_floats(module: nn.Module, dtype: torch.dtype, quant_cls: type) -> None:
    """Cast float parameters/buffers to ``dtype``, except the scales of quantized layers."""
    for m in module.modules():
        keep = set(m._buffers) if isinstance(m, quant_cls) else set()
        if isinstance(m, quant_cls) and m.mode == "kernel":
            m.compute_dtype = dtype
        for store in (m._parameters, m._buffers):
            for k, t in store.items():
                if t is not None and t.is_floating_point() and k not in keep and t.dtype != dtype:
                    new = t.to(dtype)
                    store[k] = nn.Parameter(new, requires_grad=False) if isinstance(t, nn.Parameter) else new


class QBenchQuantized(ModelMixin):
    """What ``model_index.json`` names for a qbench-quantized component: diffusers'
    ``DiffusionPipeline.from_pretrained`` calls :meth:`from_pretrained` with the component's
    folder, which returns the component itself (its own diffusers/transformers class holding
    ``QuantLinear``/``QuantConv2d`` layers), not an instance of this class."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, **kwargs: Any) -> nn.Module:  # type: ignore[override]
        """``torch_dtype`` as in :func:`load_component`; ``device_map`` is refused (load, then
        ``.to(device)``); diffusers' other loading options do not apply and are ignored."""
        if kwargs.get("device_map") not in (None, "cpu"):
            raise QBenchError("device_map is not supported for qbench-quantized components: load the pipeline, then .to(device)")
        folder = str(pretrained_model_name_or_path)
        if kwargs.get("subfolder"):
            folder = os.path.join(folder, kwargs["subfolder"])
        return load_component(folder, kwargs.get("torch_dtype"))
