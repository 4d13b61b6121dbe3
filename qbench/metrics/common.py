"""Helpers shared by the metrics: image conversion, weights resolution and provenance.

Weights policy (one rule for every learned metric):

* an explicit local path (an option such as ``inception_weights``) is used as given;
* otherwise the metric's usual download is used: a file already in the cache is reused, and when
  the hub is disabled (``HF_HUB_OFFLINE=1`` or ``QBENCH_OFFLINE=1``) or the download fails, a
  :class:`~qbench.errors.MissingWeightsError` names the option that supplies the file. There is
  never a silent fallback to other (or random) weights.

Loading (one rule for every weights file a user can name): :func:`load_tensor_file` reads
safetensors, or ``torch.load(weights_only=True)`` - never a full unpickle, which runs whatever
code a crafted file carries. TorchScript archives are programs; a metric that accepts them
(CLIP-IQA's backbone) runs only archives whose SHA-256 is published by their maker.

Provenance: a weights file may have a sidecar ``<file>.qbench.json`` (written by
:mod:`qbench.metrics.standins` and by the toy world) whose keys are merged into a metric's
``details``; a sidecar with ``"meaningful": false`` marks every number made with it.
"""
from __future__ import annotations

import json
import os
import urllib.error
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from qbench.errors import ConfigError, MissingWeightsError, QBenchError
from qbench.fsutil import sha256_file

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from qbench.api import MetricContext

SIDECAR_SUFFIX = ".qbench.json"


# -- options ------------------------------------------------------------------------------------
def _global_options() -> tuple:
    from qbench.options import Opt

    return (
        Opt("standin", "bool", False, "replace every learned network by a tiny random local one (numbers check mechanics only)"),
        Opt("metric_batch_size", "int", None, "images per metric forward pass", minimum=1),
    )


#: options every metric reads
GLOBAL_OPTIONS = _global_options()


def opt(ctx: MetricContext, key: str, default: Any = None) -> Any:
    """A metric option (``RunConfig.metric_options``), ``default`` when absent or None."""
    value = (ctx.options or {}).get(key)
    return default if value is None else value


def opt_bool(ctx: MetricContext, key: str, default: bool = False) -> bool:
    value = opt(ctx, key, default)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"metric option {key!r} must be a boolean, got {value!r}")
    return bool(value)


def opt_float(ctx: MetricContext, key: str, default: float) -> float:
    value = opt(ctx, key, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"metric option {key!r} must be a number, got {value!r}") from None


def opt_int(ctx: MetricContext, key: str, default: int | None) -> int | None:
    value = opt(ctx, key, default)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"metric option {key!r} must be an integer, got {value!r}") from None


def resolve_device(device: str | None) -> str:
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def is_offline() -> bool:
    """True when downloads are disabled (``HF_HUB_OFFLINE`` or ``QBENCH_OFFLINE`` set truthy)."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "QBENCH_OFFLINE"))


# -- images -------------------------------------------------------------------------------------
def to_uint8_array(image: Any) -> np.ndarray:
    """An RGB picture as a ``HxWx3`` uint8 array.

    Accepts a PIL image, a uint8 array/tensor (HWC or CHW) or a float array/tensor in [0, 1].
    Floats outside [0, 1] are refused (a float image in [0, 255] is the classic mis-scaling bug).
    """
    arr = to_unit_float_array(image)
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def to_unit_float_array(image: Any, dtype: Any = np.float32) -> np.ndarray:
    """An RGB picture as a ``HxWx3`` float array (``dtype``) in [0, 1] (see :func:`to_uint8_array`)."""
    from PIL import Image as PILImage

    if isinstance(image, PILImage.Image):
        return np.asarray(image.convert("RGB"), dtype=dtype) / 255.0
    if hasattr(image, "detach"):  # torch tensor
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim != 3:
        raise ConfigError(f"expected one RGB image (HxWx3 or 3xHxW), got an array of shape {arr.shape}")
    if arr.shape[-1] != 3 and arr.shape[0] == 3:
        arr = np.transpose(arr, (1, 2, 0))
    if arr.shape[-1] != 3:
        raise ConfigError(f"expected 3 colour channels, got an array of shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(dtype) / 255.0
    if np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ConfigError("image contains NaN or inf")
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ConfigError(
                f"float images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}] "
                "(pass uint8 for [0, 255] data)"
            )
        return np.clip(arr, 0.0, 1.0).astype(dtype)
    raise ConfigError(f"unsupported image dtype {arr.dtype}; use uint8 or float in [0, 1]")


def batch_unit_tensor(images: Sequence[Any], device: str = "cpu") -> torch.Tensor:
    """``N x 3 x H x W`` float32 tensor in [0, 1]; all images must have one size."""
    import torch

    arrays = [to_unit_float_array(im) for im in images]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ConfigError(f"images of different sizes in one batch: {sorted(sizes)}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().to(device)


def check_pairs(images: Sequence[Any], references: Sequence[Any] | None, metric: str) -> None:
    if references is None:
        raise ConfigError(f"metric {metric!r} needs the full-precision model's images as references")
    if len(references) != len(images):
        raise ConfigError(f"metric {metric!r}: {len(images)} images but {len(references)} references")


# -- weights ------------------------------------------------------------------------------------
_SHA_CACHE: dict[tuple[str, int, float], str] = {}


def file_sha256(path: str) -> str:
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


def weights_provenance(path: str, source: str) -> dict[str, Any]:
    """What to record about a weights file: where it came from, its hash and sidecar labels."""
    info: dict[str, Any] = {"source": source, "file": os.path.basename(path), "sha256": file_sha256(path)[:16]}
    sidecar = path + SIDECAR_SUFFIX
    if os.path.isfile(sidecar):
        with open(sidecar) as f:
            info.update(json.load(f))
    return info


def merge_provenance(details: dict[str, Any], key: str, prov: dict[str, Any]) -> None:
    """Store ``prov`` under ``details[key]`` and propagate stand-in labels to the top level."""
    details[key] = prov
    if prov.get("meaningful") is False:
        details["meaningful"] = False
        labels = details.setdefault("weights", "")
        label = f"{key}: {prov.get('weights', 'stand-in weights')}"
        details["weights"] = f"{labels}; {label}" if labels else label


def write_sidecar(path: str, info: dict[str, Any]) -> None:
    from qbench.fsutil import atomic_write_text

    atomic_write_text(path + SIDECAR_SUFFIX, json.dumps(info, indent=1, sort_keys=True))


def fetch_weights(url: str, what: str, option: str, subdir: str = "checkpoints", flag: str | None = None) -> str:
    """Path of the file at ``url`` in torch's hub cache, downloading it when allowed.

    Offline (or on a failed download) raise :class:`MissingWeightsError` naming ``option``.
    """
    import torch

    target_dir = os.path.join(torch.hub.get_dir(), subdir)
    target = os.path.join(target_dir, os.path.basename(url.split("?")[0]))
    if os.path.isfile(target):
        return target
    how = f"{flag} PATH or -M {option}=PATH" if flag else f"-M {option}=PATH (metric option {option})"
    hint = f"pass {how} (expected file: {os.path.basename(target)})"
    if is_offline():
        raise MissingWeightsError(f"{what} weights are not cached and downloads are disabled (offline); {hint}")
    os.makedirs(target_dir, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, target, progress=False)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise MissingWeightsError(f"{what} weights could not be downloaded from {url} ({e}); {hint}") from e
    return target


def local_file(path: str, what: str, option: str) -> str:
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise MissingWeightsError(f"{what} weights file not found: {path} (metric option {option})")
    return path


def versions(*packages: str) -> dict[str, str]:
    from importlib import metadata

    out = {}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def is_torchscript(path: str) -> bool:
    """True if ``path`` is a TorchScript archive (a zip holding ``constants.pkl`` or ``code/``)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/", 1)[-1] == "constants.pkl" or "/code/" in f"/{n}" for n in z.namelist())


def load_tensor_file(path: str, what: str, option: str) -> dict[str, torch.Tensor]:
    """The ``name -> tensor`` dict stored in ``path`` (CPU), loaded without running code.

    ``.safetensors`` through safetensors; anything else through ``torch.load(weights_only=True)``
    (tensors, numbers, strings, dicts and lists only; a ``{"state_dict": {...}}`` wrapper is
    unwrapped). Raises :class:`QBenchError` (one line naming ``option``) for a file that would need
    a full unpickle (a pickled object, possibly carrying a payload), a TorchScript archive, or
    anything that is not a dict of tensors; :class:`MissingWeightsError` if it does not exist.
    """
    import pickle

    import torch

    path = local_file(path, what, option)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as e:  # safetensors raises its own error types on a malformed header
            raise QBenchError(f"{what}: {path} is not a readable safetensors file ({type(e).__name__}: {_first_line(e)})") from None
    if is_torchscript(path):
        raise QBenchError(
            f"{what}: {path} is a TorchScript archive, i.e. a program; qbench does not run user-supplied programs "
            f"(option {option}). If you trust it, save its tensors: torch.save(torch.jit.load(f).state_dict(), 'weights.pt')"
        )
    import zipfile

    try:  # torch.save's zip format is memory-mapped: checking a 1.7 GB CLIP file reads little of it
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # noqa: BLE001 - any failure to parse a user's file (text, junk, pickles) is one line
        raise QBenchError(
            f"{what}: {path} was refused by torch.load(weights_only=True) ({_load_reason(e)}); qbench reads user-supplied weights "
            f"only as plain tensors (a state dict saved with torch.save, or safetensors), never by unpickling objects, "
            f"which can run code (option {option})"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise QBenchError(f"{what}: {path} does not hold a state dict (a non-empty dict of tensors) (option {option})")
    return obj


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""


def _load_reason(e: BaseException) -> str:
    """The gist of a ``torch.load`` error: the ``WeightsUnpickler error`` clause when there is one."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n\n|$)", text, re.S)
    return " ".join(m.group(1).split())[:200] if m else f"{type(e).__name__}: {_first_line(e)}"
