"""Is the process that started a run still alive?

A run killed by ``kill -9``, an OOM killer or a power cut never gets to mark itself, so its row in
the store says ``running`` forever. Each run therefore records who runs it (:func:`this_process`):
host name, pid and the process's start time (seconds since the epoch, from ``psutil``, so that a
later process that happens to get the same pid is not mistaken for it). A reader on the same host
can then tell a dead ``running`` run (:func:`owner_state`); on another host it cannot, and says so.
"""
from __future__ import annotations

import os
import socket
from typing import Any

#: two start times closer than this (seconds) are the same process (psutil derives them from clock
#: ticks since boot: 10 ms resolution, and the boot time it adds is whole seconds)
START_TOLERANCE_S = 1.0


def this_process() -> dict[str, Any]:
    """``{"host", "pid", "started"}`` of the calling process (``started``: epoch seconds, float;
    None where psutil cannot tell)."""
    import psutil

    try:
        started = psutil.Process(os.getpid()).create_time()
    except psutil.Error:
        started = None
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": started}


def owner_state(owner: dict[str, Any] | None) -> tuple[str, str]:
    """``(state, why)`` of a run's recorded process: state ``"alive"``, ``"gone"`` or ``"unknown"``
    (no owner recorded, or another host), ``why`` one short phrase for tables."""
    import psutil

    if not owner or not isinstance(owner, dict) or owner.get("pid") is None:
        return "unknown", "no process recorded (run stored by an older qbench)"
    try:
        pid, host = int(owner["pid"]), owner.get("host")
        started = None if owner.get("started") is None else float(owner["started"])
    except (TypeError, ValueError, OverflowError):
        return "unknown", f"the recorded process {str(owner)[:60]} is not a pid (the database was edited)"
    if host != socket.gethostname():
        return "unknown", f"pid {pid} on host {host}: cannot check from {socket.gethostname()}"
    who = f"pid {pid} on {host}"
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return "gone", f"{who} has exited"
        if started is not None and abs(proc.create_time() - started) > START_TOLERANCE_S:
            return "gone", f"{who} has exited (the pid now belongs to another process)"
    except (psutil.NoSuchProcess, OverflowError, ValueError):  # OverflowError/ValueError: a pid no process can have
        return "gone", f"{who} has exited"
    except psutil.AccessDenied:
        return "alive", who  # it exists and belongs to someone else: assume it is ours
    return "alive", who
