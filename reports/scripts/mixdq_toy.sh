#!/usr/bin/env bash
# MixDQ on the toy world (reports/mixdq-toy.md), MixDQ's allocation rule (the default -O rule=mixdq).
# For each toy model: calibrate mixdq at W4A8 (naive's bytes) and W8A8, the second reusing the first's
# cached sensitivities; try W3A8 (refused in one line where MixDQ's rule cannot reach a 3-bit mean);
# then on the same held-out prompts fp, naive and mixdq at both budgets; ablations of the text-token
# rule on the W4A8 allocation (fewer prompts, paired on the common ones); mixdq in kernel mode;
# with QSCHED=1 also Q-Sched over naive and over mixdq at W4A8 (a 600-image search each). Then the
# tiny twins of the four real models (mechanics, simulate and kernel) and the Markdown report.
#   usage: reports/scripts/mixdq_toy.sh [EVAL_PROMPTS] [OUT_DIR]     e.g. toy:1332 qbench-out/mixdq-toy
#   env:   QBENCH (qbench), PYTHON (python), NICE (nice -n 10), QSCHED (0), MODELS ("toy-flux toy-lcm"), TWINS (1)
set -euo pipefail
EV=${1:-toy:1332}; R=${2:-qbench-out/mixdq-toy}
Q=${QBENCH:-qbench}; PY=${PYTHON:-python}; N=${NICE:-nice -n 10}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
mkdir -p "$R"
METRICS=psnr,ssim,toy-acc,fd-toyclip,jaq
BUDGETS=(W4A8 W8A8)
QS=(-O search=own -O max_images=600)  # Q-Sched's own search, a 600-image budget per base method
for M in ${MODELS:-toy-flux toy-lcm}; do
  D="$R/$M"; mkdir -p "$D"
  C=(--model "$M" --out-dir "$D" --no-progress --batch-size 32 --latency-repeats 3 --latency-warmup 1)
  for B in "${BUDGETS[@]}"; do
    $N $Q calibrate "${C[@]}" --method mixdq --bits $B > "$D/calib_$B.json" 2> "$D/calib_$B.log"
  done
  # a 3-bit mean: refused in one line where the rule cannot reach it (the log keeps the line)
  if $N $Q calibrate "${C[@]}" --method mixdq --bits W3A8 > "$D/calib_W3A8.json" 2> "$D/calib_W3A8.log"; then :; else rm -f "$D/calib_W3A8.json"; fi
  Y=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['yaml'])" "$D/calib_W4A8.json")
  E=("${C[@]}" --prompts "$EV" --metrics "$METRICS" --json)
  $N $Q run "${E[@]}" --method fp > "$D/fp.json"
  for B in "${BUDGETS[@]}"; do
    $N $Q run "${E[@]}" --method naive --bits $B > "$D/naive_$B.json"
    $N $Q run "${E[@]}" --method mixdq --bits $B > "$D/mixdq_$B.json"
  done
  if [ "${QSCHED:-0}" = 1 ]; then
    $N $Q run "${E[@]}" --method qsched --bits W4A8 "${QS[@]}" > "$D/qsched_naive.json"
    $N $Q run "${E[@]}" --method qsched --bits W4A8 "${QS[@]}" -O base=mixdq > "$D/qsched_mixdq.json"
  fi
  A=("${C[@]}" --prompts toy:333 --metrics psnr,ssim,toy-acc --json --method mixdq --bits W4A8 -O allocation="$Y")
  if [ "$M" = toy-lcm ]; then
    $N $Q run "${A[@]}" -O bos=false --tag no-bos > "$D/mixdq_nobos.json"
  else
    for T in first outlier; do $N $Q run "${A[@]}" -O text_token_rule=$T --tag "token-$T" > "$D/mixdq_$T.json"; done
  fi
  $N $Q run "${C[@]}" --prompts toy:64 --metrics psnr --json --method mixdq --bits W4A8 --mode kernel > "$D/mixdq_kernel.json"
  $N $Q run "${C[@]}" --prompts toy:64 --metrics psnr --json --method naive --bits W4A8 --mode kernel > "$D/naive_kernel.json"
done
# the tiny twins of the real models: random weights, mechanics only (2 calibration prompts, one split point)
if [ "${TWINS:-1}" = 1 ]; then
  for M in tiny-lcm tiny-pcm tiny-sdxl-turbo tiny-flux; do
    D="$R/$M"; mkdir -p "$D"
    C=(--model "$M" --out-dir "$D" --no-progress --prompts coco2017:4 --batch-size 2 --metrics psnr --latency-repeats 1 --latency-warmup 0 --json)
    X=(--calib-prompts coco2017-calib:2 -O k_sweep=1 -O b_sweep=4 -O a_candidates=8)
    $N $Q run "${C[@]}" "${X[@]}" --method mixdq --bits W4A8 > "$D/mixdq.json" 2> "$D/calib.log"
    $N $Q run "${C[@]}" "${X[@]}" --method mixdq --bits W4A8 --mode kernel > "$D/mixdq_kernel.json"
    $N $Q run "${C[@]}" --method naive --bits W4A8 --mode kernel > "$D/naive_kernel.json"
  done
fi
$PY "$(dirname "$0")/mixdq_toy_md.py" "$R" "$EV" "$(IFS=,; echo "${BUDGETS[*]}")" > "$R/mixdq-toy.md"
echo "wrote $R/mixdq-toy.md and $R/mixdq-toy/*.png (copy both to reports/)"
