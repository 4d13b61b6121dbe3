"""Record the speed-and-memory baseline of `make bench` on this machine: tests/bench/baseline.json
(a pytest-benchmark JSON) and tests/bench/noise.json (the measured noise and the fail thresholds).

    python reports/scripts/bench_baseline.py [--sessions 5] [--safety 1.5]

Runs the whole pytest-benchmark suite (tests/bench: toy end-to-end generation, kernel layers)
SESSIONS times, each a fresh process (as `make bench` runs it). Per benchmark, the noise of the
median is the largest relative distance of a session's median from the median over sessions;
per benchmark, the noise of the peak generation memory is the largest absolute distance (MiB).
The committed baseline is the session closest to the medians over sessions (least summed
|log ratio|), and

    latency_fail_pct = SAFETY x the largest latency noise over benchmarks (in %, rounded up)
    memory_fail_mib  = max(SAFETY x the largest memory noise, 1 MiB)

so `make bench` (`--benchmark-compare-fail=median:<latency_fail_pct>%`) fails only on a change
larger than what repeating the suite on this machine produced. Baselines are machine-specific:
re-record on the machine that runs `make bench`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile

from qbench import regress


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=5)
    ap.add_argument("--safety", type=float, default=1.5)
    a = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="qbench-bench-") as tmp:
        for i in range(a.sessions):
            out = os.path.join(tmp, f"s{i}.json")
            rc = regress.run_bench(out, None, None)
            if rc != 0:
                raise SystemExit(f"session {i}: the benchmark suite failed (exit {rc})")
            with open(out) as f:
                runs.append(json.load(f))
            print(f"session {i + 1}/{a.sessions} done")
    names = [b["fullname"] for b in runs[0]["benchmarks"]]
    med = {n: [next(b for b in r["benchmarks"] if b["fullname"] == n)["stats"]["median"] for r in runs] for n in names}
    mem = {n: [next(b for b in r["benchmarks"] if b["fullname"] == n)["extra_info"].get("peak_generate_mib") for r in runs] for n in names}
    centre = {n: statistics.median(v) for n, v in med.items()}
    lat_noise = {n: max(abs(x / centre[n] - 1) for x in v) for n, v in med.items()}
    mem_noise = {n: (max(v) - min(v)) for n, v in mem.items() if all(x is not None for x in v)}
    best = min(range(len(runs)), key=lambda i: sum(abs(math.log(med[n][i] / centre[n])) for n in names))
    with open(regress.BENCH_BASELINE, "w") as f:
        json.dump(runs[best], f, indent=1)
        f.write("\n")
    mi = runs[best]["machine_info"]
    noise = {
        "machine": f"{mi.get('cpu', {}).get('brand_raw', '?')}, {mi.get('cpu', {}).get('count', '?')} cores, {mi.get('python_implementation')} "
                   f"{mi.get('python_version')}, {mi.get('node')}",
        "how": f"{a.sessions} sessions of the whole suite, each a fresh process; latency noise = max |session median / median over sessions - 1|; "
               f"memory noise = max - min of the peak generation memory over sessions; thresholds = safety {a.safety:g} x the largest noise",
        "sessions": a.sessions, "safety": a.safety, "baseline_session": best,
        "latency_noise_pct": {n.split("::")[-1]: round(100 * v, 1) for n, v in lat_noise.items()},
        "memory_noise_mib": {n.split("::")[-1]: round(v, 2) for n, v in mem_noise.items()},
        "medians_ms": {n.split("::")[-1]: [round(1e3 * x, 3) for x in v] for n, v in med.items()},
        "latency_fail_pct": math.ceil(a.safety * 100 * max(lat_noise.values())),
        "memory_fail_mib": round(max(1.0, a.safety * max(mem_noise.values(), default=0.0)), 1),
    }
    with open(regress.BENCH_NOISE, "w") as f:
        json.dump(noise, f, indent=1)
        f.write("\n")
    print(json.dumps({k: noise[k] for k in ("machine", "latency_fail_pct", "memory_fail_mib", "latency_noise_pct", "memory_noise_mib")}, indent=1))


if __name__ == "__main__":
    main()
