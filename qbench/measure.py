"""Measurements that need no learned network: latency, peak memory, provenance.

Latency: ``warmup`` untimed generations, then ``repeats`` timed ones of one prompt at batch 1,
CUDA-synchronised; per-step times come from diffusers' ``callback_on_step_end`` (the time between
consecutive step ends, so the first step, which includes nothing else, is measured from the
previous callback only from step 2 on). Peak memory: CUDA peak allocated after a reset, or on CPU
the process's peak resident set (VmHWM) after resetting it through ``/proc/self/clear_refs``.
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from typing import Any

from qbench.models.base import LoadedModel, sync


def _summary(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) >= 2 else [xs[0]] * 3
    return {"median": statistics.median(xs), "iqr": q[2] - q[0], "min": xs[0], "max": xs[-1], "n": len(xs)}


def measure_latency(model: LoadedModel, prompt: str, seed: int, *, warmup: int = 1, repeats: int = 3, **gen_kwargs: Any) -> dict[str, Any]:
    for _ in range(warmup):
        model.generate([prompt], [seed], **gen_kwargs)
    e2e: list[float] = []
    steps: list[float] = []
    for _ in range(repeats):
        marks: list[float] = []

        def on_step(i: int) -> None:
            sync(model.device)
            marks.append(time.perf_counter())

        sync(model.device)
        t0 = time.perf_counter()
        model.generate([prompt], [seed], step_callback=on_step, **gen_kwargs)
        sync(model.device)
        e2e.append(time.perf_counter() - t0)
        steps += [b - a for a, b in zip(marks, marks[1:])]
    out: dict[str, Any] = {"end_to_end_s": _summary(e2e), "batch_size": 1, "warmup": warmup, "repeats": repeats}
    if steps:
        out["per_step_s"] = _summary(steps)
    return out


def flush(device: str) -> None:
    """Free what can be freed before a measurement, as diffusers' benchmarks do: Python garbage,
    the CUDA caching allocator (and its peak counters, for ``device``'s index), and on Linux the C
    heap's free pages (``malloc_trim``), so that memory freed by earlier work does not count."""
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def process_rss() -> int | None:
    """The process's resident set now (bytes; None where /proc is unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """Context manager measuring peak memory of the block (bytes).

    CUDA: ``torch.cuda.max_memory_allocated(device)`` after a reset, for the device's own index.
    CPU: the process's peak resident set (VmHWM, reset through ``/proc/self/clear_refs``), and,
    given ``baseline`` (the RSS before the model was loaded: interpreter and libraries), the peak
    above that baseline, i.e. weights + activations + allocator slack."""

    def __init__(self, device: str, baseline: int | None = None):
        self.device = device
        self.baseline = baseline
        self.result: dict[str, Any] = {}

    def __enter__(self) -> "PeakMemory":
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _reset_peak_rss()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)
            self.result = {"peak_bytes": int(torch.cuda.max_memory_allocated(self.device)), "kind": f"CUDA peak allocated on {self.device}"}
        else:
            peak = _peak_rss()
            self.result = {"peak_bytes": peak, "kind": "process peak RSS (VmHWM)" + ("" if _RESET_OK else ", not resettable: whole-process peak")}
            if self.baseline:
                self.result["baseline_bytes"] = self.baseline
                self.result["peak_above_baseline_bytes"] = max(0, peak - self.baseline)


def peak_memory(device: str) -> PeakMemory:
    return PeakMemory(device)


_RESET_OK = True


def _reset_peak_rss() -> None:
    global _RESET_OK
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        _RESET_OK = False


def _peak_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# -- provenance -------------------------------------------------------------------------------------
_PACKAGES = ("qbench", "torch", "diffusers", "transformers", "torchao", "open_clip_torch", "pyiqa", "torchmetrics", "numpy")


def _version(pkg: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def qbench_version() -> dict[str, Any]:
    """qbench's version and where it came from (what a stored artefact's provenance records beside
    its identity): for a checkout of qbench, its git commit (:func:`git_hash`); for an installed
    qbench, the installer's ``direct_url.json`` (PEP 610: the wheel file or URL it came from),
    where there is one."""
    out: dict[str, Any] = {"version": _version("qbench"), "git": git_hash()}
    if out["git"] is None:
        url = _direct_url()
        if url is not None:
            out["direct_url"] = url
    return out


def _direct_url() -> dict[str, Any] | None:
    """The ``direct_url.json`` of the installed qbench distribution (PEP 610), or None."""
    import json
    from importlib import metadata

    # every qbench distribution on sys.path: a source checkout's ``qbench.egg-info`` (setuptools
    # writes it beside pyproject.toml, and the current folder comes first on sys.path) has no
    # direct_url.json; the installer's dist-info in site-packages does
    for dist in metadata.distributions(name="qbench"):
        try:
            text = dist.read_text("direct_url.json")
            if text:
                return json.loads(text)
        except ValueError:
            continue
    return None


def git_hash() -> str | None:
    """The git commit (``+dirty`` with uncommitted changes to tracked files) of the qbench checkout
    this code runs from, or None: for an installed qbench (whose folder may sit inside some other
    repository: a project's virtual environment) and for a checkout that is not its own git
    repository's root, so no other repository's commit is ever recorded as qbench's."""
    from qbench.resources import checkout_root

    repo = checkout_root()
    if repo is None:
        return None
    try:
        top = subprocess.run(["git", "-C", repo, "rev-parse", "--show-toplevel"], check=False, capture_output=True, text=True, timeout=5)
        if top.returncode != 0 or os.path.realpath(top.stdout.strip()) != os.path.realpath(repo):
            return None
        h = subprocess.run(["git", "-C", repo, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5)
        if h.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5)
        return h.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu: {name}"


def omp_wait_policy() -> str:
    """The ``OMP_WAIT_POLICY`` torch's OpenMP runtime started with, as far as qbench can know:
    ``"PASSIVE"`` (qbench's default), the user's value, or ``"unset (active wait)"``."""
    import qbench

    v = qbench.OMP_WAIT_POLICY_AT_TORCH_LOAD
    return v.upper() if v else "unset (active wait)"


def provenance(device: str) -> dict[str, Any]:
    import torch

    from qbench.store import utcnow

    return {
        "date": utcnow(),
        "git": git_hash(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": omp_wait_policy(),
        "versions": {p: _version(p) for p in _PACKAGES},
    }
