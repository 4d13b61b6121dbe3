#!/usr/bin/env bash
# The toy world's numbers (reports/toy-world.md): what the FP toy models draw (single- and
# two-object held-out scenes), CLIP-IQA's ranking of clean vs degraded images, and naive
# quantization at W8A8 / W4A8 / W4A4 / W2A8 against FP on 592 held-out prompts.
#   usage: reports/scripts/toy_world.sh [OUT_DIR]
set -euo pipefail
R=${1:-qbench-out/toy-world}
Q=${QBENCH:-qbench}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$R"
for M in toy-lcm toy-flux; do
  $Q zoo eval --model "$M" --n 296 > "$R/eval_$M.json"
  $Q zoo eval --model "$M" --n 362 --prompt-set toy-pair > "$R/eval_pair_$M.json"
  $Q zoo quant-sweep --model "$M" --n 592 --json "$R/quant_$M.json" --markdown "$R/quant_$M.md"
done
$Q zoo eval --model toy-flux --n 148 --clipiqa-ranking > "$R/clipiqa_ranking.json"
python "$(dirname "$0")/toy_world_md.py" "$R" > "$(dirname "$0")/../toy-world.md"
