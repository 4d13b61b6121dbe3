"""Shared training plumbing: seeded data, resumable checkpoints, EMA, time budgets, logging."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np

from qbench.errors import ConfigError
from qbench.fsutil import atomic_write
from qbench.models.base import cache_root
from qbench.toyworld import WEIGHTS_DIR  # noqa: F401 (re-exported: the zoo ships into it)
from qbench.toyworld.render import Scene, render


def work_root() -> str:
    """Where training keeps checkpoints, logs and exports: ``$QBENCH_ZOO_WORK``, else
    ``<qbench cache>/zoo-train`` (the cache is ``$QBENCH_CACHE``, else ``~/.cache/qbench``)."""
    return os.environ.get("QBENCH_ZOO_WORK") or os.path.join(cache_root(), "zoo-train")


def work_dir(name: str, create: bool = True) -> str:
    """``<work_root()>/<name>``, created unless ``create=False`` (readers must not create it)."""
    d = os.path.join(work_root(), name)
    if create:
        os.makedirs(d, exist_ok=True)
    return d


def check_train_args(*, steps: int, minutes: float, batch: int, lr: float, threads: int) -> None:
    """The settings every trainer shares; raises ``ConfigError`` (one line, no traceback in the
    CLI) before anything is loaded or created."""
    for name, value in (("steps", steps), ("batch", batch), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    for name, value in (("minutes", minutes), ("lr", lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ConfigError(f"{name} must be a positive number, got {value!r}")


def log(path: str, **fields: Any) -> None:
    fields["time"] = round(time.time(), 1)
    line = json.dumps(fields)
    print(line, flush=True)
    with open(path, "a") as f:
        f.write(line + "\n")


def read_log(path: str) -> tuple[list[dict], list[int]]:
    """The records of a training log written by :func:`log` (one JSON object a line), and the
    1-based numbers of the lines that are not one (a write cut by a kill or a full disk): those
    are skipped, so that a damaged log never stops ``qbench zoo status`` or ``ship``."""
    rows, bad = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad.append(n)
    return rows, bad


def images_to_tensor(images):
    """PIL RGB list -> float tensor (B, 3, H, W) in [-1, 1]."""
    import torch

    a = np.stack([np.asarray(im, np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()


def render_batch(scenes: list[Scene]):
    return images_to_tensor([render(s) for s in scenes])


class EMA:
    def __init__(self, model, decay: float = 0.999):
        import copy

        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def update(self, model, step: int) -> None:
        import torch

        d = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(self.model.parameters(), model.parameters()):
                pe.mul_(d).add_(p.detach(), alpha=1 - d)


def save_ckpt(path: str, **state: Any) -> None:
    import torch

    atomic_write(path, lambda tmp: torch.save(state, tmp))


def save_training_state(path: str, model, opt, ema, step: int, elapsed: float, **extra: Any) -> None:
    """Model, optimizer and EMA (+ ``extra``) at ``step``: what :func:`resume` restores."""
    save_ckpt(path, model=model.state_dict(), opt=opt.state_dict(), ema=ema.model.state_dict(), step=step,
              elapsed=elapsed, **extra)


def load_ckpt(path: str):
    import torch

    if not os.path.exists(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=True)  # state dicts, numbers: no unpickling of objects


def resume(ckpt_path: str, log_path: str, model, opt, ema, **settings: Any):
    """Restore model, optimizer and EMA from ``ckpt_path`` if it exists (logging a "resume" event;
    a fresh run logs a "start" event). ``settings`` (lr, batch, ...) go into that event, so the log
    says which settings trained which steps.

    -> (checkpoint dict or None, step, elapsed seconds); callers restore their extra state from the dict.
    """
    st = load_ckpt(ckpt_path)
    if st is None:
        log(log_path, event="start", step=0, elapsed=0.0, **settings)
        return None, 0, 0.0
    model.load_state_dict(st["model"]); opt.load_state_dict(st["opt"]); ema.model.load_state_dict(st["ema"])
    log(log_path, event="resume", step=st["step"], elapsed=st["elapsed"], **settings)
    return st, st["step"], st["elapsed"]


def versions() -> dict[str, str]:
    import diffusers
    import open_clip
    import torch
    import transformers

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "open_clip": open_clip.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def setup_torch(seed: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
