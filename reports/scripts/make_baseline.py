"""Write reports/baselines/toy.json, the numbers tests/test_regression_toy.py guards.

    python reports/scripts/make_baseline.py            # after retraining the toy models or on purpose

fp and naive W8A8 / W4A8 (simulate) of toy-flux and toy-lcm on toy:32; see TOLERANCE in
qbench/zoo/quant_sweep.py for how much worse a later run may be.
"""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from qbench.zoo.quant_sweep import baseline_numbers  # noqa: E402

path = os.path.join(os.path.dirname(__file__), "..", "baselines", "toy.json")
os.makedirs(os.path.dirname(path), exist_ok=True)
data = {m: baseline_numbers(m) for m in ("toy-flux", "toy-lcm")}
with open(path, "w") as f:
    json.dump(data, f, indent=1, sort_keys=True)
print(json.dumps(data, indent=1))
