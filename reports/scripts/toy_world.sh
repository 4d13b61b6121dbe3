#!/usr/bin/env bash
# The toy world's numbers (reports/toy-world.md): what the FP toy models draw (single- and
# two-object held-out scenes, `qbench zoo eval`), CLIP-IQA's ranking of clean vs degraded images,
# then the report itself (reports/scripts/toy_reports.py), whose quantization sections come from
# the `qbench run`s of reports/scripts/toy_claims.sh (run that first, into CLAIMS_DIR).
#   usage: reports/scripts/toy_world.sh [OUT_DIR] [CLAIMS_DIR]
set -euo pipefail
R=${1:-qbench-out/toy-world}; C=${2:-qbench-out/toy-claims}
Q=${QBENCH:-qbench}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$R"
for M in toy-lcm toy-flux; do
  $Q zoo eval --model "$M" --n 296 > "$R/eval_$M.json"
  $Q zoo eval --model "$M" --n 362 --prompt-set toy-pair > "$R/eval_pair_$M.json"
done
$Q zoo eval --model toy-flux --n 148 --clipiqa-ranking > "$R/clipiqa_ranking.json"
python "$(dirname "$0")/toy_reports.py" "$C" --fp-eval "$R"
