"""Atomic writes (qbench.fsutil) and their users: concurrent writers of one file never collide,
and a reader always finds a whole, valid file."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from qbench.fsutil import atomic_write, atomic_write_text

N_SAVES = 300  # per process

# One writer process: N_SAVES saves of one kind to the same path; prints how many raised.
WRITER = textwrap.dedent("""
    import sys
    kind, path, n, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if kind == "text":
        import json
        from qbench.fsutil import atomic_write_text
        save = lambda i: atomic_write_text(path, json.dumps({"writer": tag, "i": i, "pad": "x" * 20000}))
    elif kind == "qsched":
        from qbench.methods import qsched as qs
        ck = qs.make_checkpoint(qs.QSchedCoefficients("ramp", (0.9, 1.1)), steps=4, model="tiny-flux", bits="W4A8")
        save = lambda i: qs.save_checkpoint(path, dict(ck, writer=tag, i=i, pad="x" * 20000))
    elif kind == "calibration":
        from qbench.calibctx import ScoreCache
        cache = ScoreCache(path, {"same": "for both"})
        def save(i):
            cache._scores = {(f"{tag}-{i}-{j}", "p0"): float(j) for j in range(400)}
            cache._rewrite()
    elif kind == "zoo":
        import torch
        from qbench.zoo.common import save_ckpt
        save = lambda i: save_ckpt(path, writer=tag, i=i, w=torch.full((5000,), float(i)))
    errors = 0
    for i in range(n):
        try:
            save(i)
        except Exception as e:
            errors += 1
            if errors == 1:
                print(type(e).__name__, e, file=sys.stderr)
    print(errors)
""")


def _check(kind: str, path: str) -> None:
    """Raise if ``path`` is not a whole file of ``kind``."""
    if kind == "zoo":
        import torch

        st = torch.load(path, weights_only=True)
        assert st["w"].shape == (5000,) and float(st["w"][-1]) == st["i"]
        return
    with open(path) as f:
        text = f.read()
    if kind == "calibration":
        lines = text.splitlines()
        assert json.loads(lines[0]) == {"context": {"same": "for both"}} and len(lines) == 401
        assert all(json.loads(line)["p"] == "p0" for line in lines[1:])
    else:
        assert len(json.loads(text)["pad"]) == 20000


@pytest.mark.parametrize("kind", ["text", "qsched", "calibration", "zoo"])
def test_two_processes_saving_to_one_path_never_collide(tmp_path, kind):
    """2 processes x 300 saves to one path: no save fails, every read of the file (while they
    run) finds a whole, valid file, and no temporary file is left behind. With a fixed temporary
    name (``path + ".tmp"``, as before qbench.fsutil) 50 to 90 of the 600 saves raised (measured)."""
    path = str(tmp_path / ("target.pt" if kind == "zoo" else "target.json"))
    if kind == "calibration":  # both writers must open it with the same header
        atomic_write_text(path, json.dumps({"context": {"same": "for both"}}) + "\n")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, kind, path, str(N_SAVES), tag],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    reads, bad = 0, []
    while any(p.poll() is None for p in procs):
        time.sleep(0.002)  # leave the CPU to the writers
        if os.path.exists(path) and (kind != "calibration" or os.path.getsize(path) > 100):
            try:
                _check(kind, path)
            except Exception as e:  # noqa: BLE001 - any failure to read is what this test counts
                bad.append(repr(e))
            reads += 1
    results = [p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert [out.strip() for out, _ in results] == ["0", "0"], results  # saves that raised, per writer
    assert reads > 0 and not bad, (len(bad), reads, bad[:3])
    _check(kind, path)
    assert os.listdir(tmp_path) == [os.path.basename(path)]  # no temporary file left


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_text(str(path), "old")

    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(str(path), fail)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]


def test_atomic_write_creates_the_folder_and_the_mode_of_a_plain_open(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    path = tmp_path / "new" / "sub" / "f.txt"
    assert atomic_write_text(str(path), "héllo\n") == str(path)
    assert path.read_text(encoding="utf-8") == "héllo\n"
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)  # not mkstemp's 0o600
