#!/usr/bin/env bash
# Q-Sched on one toy model (reports/qsched-toy.md): calibrate at W4A8 with the own search on
# toy-calib:25, then fp / naive / qsched (the one W4A8 checkpoint) at W4A8, W8A8 and W4A4 on the
# held-out prompts, a compare table and the paired per-prompt differences.
#   usage: reports/scripts/qsched_toy.sh MODEL [EVAL_PROMPTS] [OUT_DIR]    e.g. toy-flux toy:296
set -euo pipefail
M=$1; EV=${2:-toy:296}; R=${3:-qbench-out/qsched-toy/$M}
Q=${QBENCH:-qbench}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$R"
COMMON=(--model "$M" --out-dir "$R" --no-progress --latency-repeats 3 --latency-warmup 1)
$Q calibrate "${COMMON[@]}" --method qsched --bits W4A8 --search own > "$R/calib_own.json"
$Q run "${COMMON[@]}" --method fp --prompts "$EV" --json > "$R/fp.json"
CK="$R/qsched/${M}_W4A8_naive_ramp_4steps.json"
for B in W4A8 W8A8 W4A4; do
  $Q run "${COMMON[@]}" --method naive --bits $B --prompts "$EV" --json > "$R/naive_$B.json"
  $Q run "${COMMON[@]}" --method qsched --bits $B --prompts "$EV" --qsched-ckpt "$CK" --json > "$R/qsched_$B.json"
done
$Q compare --model "$M" --out-dir "$R" > "$R/compare.txt"
python "$(dirname "$0")/paired.py" --prompts "$EV" "$R/fp.json" \
  "$R/fp.json:$R/naive_W4A8.json" \
  "$R/naive_W4A8.json:$R/qsched_W4A8.json" "$R/naive_W8A8.json:$R/qsched_W8A8.json" "$R/naive_W4A4.json:$R/qsched_W4A4.json" \
  > "$R/paired.md"
cat "$R/compare.txt" "$R/paired.md"
