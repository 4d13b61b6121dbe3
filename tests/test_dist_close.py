"""A sharded run closes its process group before the interpreter exits (qbench.dist.close).

Without it gloo's worker threads can outlive the interpreter's teardown and a finished rank ends in
``terminate called without an active exception`` (SIGABRT), seen once in CI on the 2-rank Q-Sched
test (tests/test_distributed.py). Here: close() destroys a real (one-rank, gloo) group and is
idempotent, and ``qbench.cli.main`` calls it on every way out."""
from __future__ import annotations

import pytest
import torch.distributed as tdist

from qbench import cli, dist


def test_close_destroys_a_gloo_group_and_is_idempotent(tmp_path):
    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert tdist.is_initialized()
    dist.close()
    assert not tdist.is_initialized()
    dist.close()  # nothing left: a no-op, no error


@pytest.mark.parametrize("argv, code", [(["list", "methods"], 0), (["compare", "--model", "no-such-model", "--out-dir", "{tmp}"], 2)])
def test_main_closes_the_process_group_on_every_exit(tmp_path, monkeypatch, argv, code):
    calls = []
    monkeypatch.setattr(dist, "close", lambda: calls.append(1))
    got = cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert got == code and calls == [1]
