"""Record the speed-and-memory baseline of `make bench` on this machine: tests/bench/baseline.json
(a pytest-benchmark JSON) and tests/bench/noise.json (the measured noise and the fail thresholds).

    python reports/scripts/bench_baseline.py [--sessions 5] [--safety 1.5]

Runs the whole pytest-benchmark suite (tests/bench: toy end-to-end generation, kernel layers)
SESSIONS times, each a fresh process (as `make bench` runs it). For each statistic (the median
and the minimum of a benchmark's rounds) and benchmark, the noise is the largest relative distance
of a session's value from the median over sessions; the statistic `make bench` compares is the
one with the smaller largest noise (on a shared machine the minimum, the round least disturbed by
other work, is usually far steadier than the median). Per benchmark, the noise of the peak
generation memory is its range over sessions (MiB). The committed baseline is the session closest
to the medians over sessions (least summed |log ratio| of the chosen statistic), and

    latency_fail_pct = SAFETY x the largest latency noise over benchmarks (in %, rounded up)
    memory_fail_mib  = max(SAFETY x the largest memory noise, 1 MiB)

so `make bench` (`--benchmark-compare-fail=<stat>:<latency_fail_pct>%`) fails only on a change
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

    def values(stat: str) -> dict[str, list[float]]:
        return {n: [next(b for b in r["benchmarks"] if b["fullname"] == n)["stats"][stat] for r in runs] for n in names}

    def noise_of(vals: dict[str, list[float]]) -> dict[str, float]:
        return {n: max(abs(x / statistics.median(v) - 1) for x in v) for n, v in vals.items()}

    by_stat = {stat: noise_of(values(stat)) for stat in ("median", "min")}
    stat = min(by_stat, key=lambda k: max(by_stat[k].values()))
    vals = values(stat)
    centre = {n: statistics.median(v) for n, v in vals.items()}
    mem = {n: [next(b for b in r["benchmarks"] if b["fullname"] == n)["extra_info"].get("peak_generate_mib") for r in runs] for n in names}
    mem_noise = {n: (max(v) - min(v)) for n, v in mem.items() if all(x is not None for x in v)}
    best = min(range(len(runs)), key=lambda i: sum(abs(math.log(vals[n][i] / centre[n])) for n in names))
    with open(regress.BENCH_BASELINE, "w") as f:
        json.dump(runs[best], f, indent=1)
        f.write("\n")
    mi = runs[best]["machine_info"]
    short = lambda n: n.split("::")[-1]
    noise = {
        "machine": f"{mi.get('cpu', {}).get('brand_raw', '?')}, {mi.get('cpu', {}).get('count', '?')} cores, {mi.get('python_implementation')} "
                   f"{mi.get('python_version')}, {mi.get('node')}",
        "how": f"{a.sessions} sessions of the whole suite, each a fresh process; noise of a statistic = max |session value / median over "
               f"sessions - 1|; the compared statistic is the one with the smaller largest noise; memory noise = range of the peak generation "
               f"memory over sessions; thresholds = safety {a.safety:g} x the largest noise",
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "sessions": a.sessions, "safety": a.safety, "baseline_session": best, "stat": stat,
        "latency_noise_pct": {s_: {short(n): round(100 * v, 1) for n, v in d.items()} for s_, d in by_stat.items()},
        "memory_noise_mib": {short(n): round(v, 2) for n, v in mem_noise.items()},
        "values_ms": {s_: {short(n): [round(1e3 * x, 3) for x in v] for n, v in values(s_).items()} for s_ in by_stat},
        "latency_fail_pct": math.ceil(a.safety * 100 * max(by_stat[stat].values())),
        "memory_fail_mib": round(max(1.0, a.safety * max(mem_noise.values(), default=0.0)), 1),
    }
    with open(regress.BENCH_NOISE, "w") as f:
        json.dump(noise, f, indent=1)
        f.write("\n")
    print(json.dumps({k: noise[k] for k in ("machine", "stat", "latency_fail_pct", "memory_fail_mib", "latency_noise_pct", "memory_noise_mib")}, indent=1))


if __name__ == "__main__":
    main()
