"""Several processes, one run: sharding, gathering and the main rank, on accelerate.

``accelerate launch -m qbench run ...`` or ``torchrun --nproc_per_node N -m qbench run ...``
starts N ranks. :func:`current` returns this process's :class:`Dist` (one rank of one when not
launched that way): ``accelerate.PartialState`` sets up the process group — gloo on CPU (where
qbench passes ``cpu=True``), NCCL on GPUs — and each rank uses its own GPU (``cuda:<local rank>``).

How a run is split (``qbench.harness``): the prompt list is cut into the same consecutive batches
as in one process, and rank r takes a contiguous block of batches (:meth:`Dist.shard`), so every
image is generated in the same batch, with the same seed, as in a one-process run: identical
PNGs. Per-image scores and the feature arrays behind FID-type statistics are gathered to the main
rank in batch order and replayed there, so the numbers are identical too. One rank (the main one)
writes the run to the store and measures latency and memory.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

from qbench.errors import QBenchError

T = TypeVar("T")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None
    _state: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous block of ``items`` (blocks differ in size by at most one; a rank
        may get none). Concatenating the blocks in rank order gives ``items`` back."""
        n, w, r = len(items), self.world, self.rank
        lo = r * (n // w) + min(r, n % w)
        hi = lo + n // w + (1 if r < n % w else 0)
        return list(items[lo:hi])

    # Every collective is an all-gather of (status, payload) pairs, so a rank that fails can tell
    # the others from wherever they wait: it joins their next collective with a failure record
    # (:meth:`announce_failure`), and every rank raises :class:`RankFailed` there instead of
    # hanging in a collective the failed rank never reaches. Ranks stay in lock step because every
    # phase of a run ends in a collective (``qbench.phases``).
    def _exchange(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, (_OK, obj))
        failed = [(r, o[1]) for r, o in enumerate(out) if o[0] == _FAILED]
        if failed:
            r, msg = failed[0]
            raise RankFailed(f"rank {r} of {self.world} failed: {msg}" + (f" (and {len(failed) - 1} other ranks)" if len(failed) > 1 else ""))
        return [o[1] for o in out]

    def announce_failure(self, error: BaseException) -> None:
        """Join the other ranks' next collective with a failure record (they raise RankFailed)."""
        if not self.enabled or isinstance(error, RankFailed):
            return
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        msg = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        try:
            dist.all_gather_object(out, (_FAILED, msg))
        except Exception:  # noqa: BLE001 - the process group itself is gone: nothing left to tell
            pass

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (pickled over the process group)."""
        if not self.enabled:
            return [obj]
        return self._exchange(obj)

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on the main rank (None elsewhere)."""
        if not self.enabled:
            return [obj]
        out = self._exchange(obj)
        return out if self.is_main else None

    def broadcast(self, obj: Any) -> Any:
        """The main rank's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        return self._exchange(obj if self.is_main else None)[0]

    def barrier(self) -> None:
        if self.enabled:
            self._exchange(None)

    def any_failed(self, failed: bool) -> bool:
        """True on every rank when any rank says it failed."""
        return any(self.gather(bool(failed)))

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world, "backend": self.backend, "split": "contiguous blocks of batches by prompt position"}


_OK, _FAILED = "ok", "failed"


class RankFailed(QBenchError):
    """Another rank of a sharded run failed; this rank stops the same cell (one line)."""


_CURRENT: Dist | None = None


def launched() -> bool:
    """Whether this process was started by torchrun / accelerate launch with several ranks."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def current(device: str = "auto") -> Dist:
    """This process's rank (initialising the process group once when launched with several)."""
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    if not launched():
        _CURRENT = Dist()
        return _CURRENT
    from accelerate import PartialState

    import torch

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    state = PartialState(cpu=True) if cpu else PartialState()
    _CURRENT = Dist(state.process_index, state.num_processes, state.local_process_index, str(state.backend), state)
    # the Python API has no `finally` of its own: the group is also closed before the interpreter
    # tears down (close() is idempotent; the CLI calls it first, in main's finally)
    atexit.register(close)
    return _CURRENT


def close() -> None:
    """Destroy this process's process group, if one was started (idempotent).

    Without it, gloo's worker threads outlive the interpreter's teardown and the process can end
    in ``terminate called without an active exception`` (SIGABRT) after the run has finished
    (seen once in CI on the 2-rank Q-Sched test; pytorch/pytorch#190489). Only this process's
    side is closed: every phase of a run ends in a collective, so no rank waits on it then."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: str, dist: Dist) -> str:
    """``cuda`` / ``auto`` -> this rank's own GPU when several ranks share a machine."""
    if dist.enabled and device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{dist.local_rank}"
        return "cpu"
    return device
