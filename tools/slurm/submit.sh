#!/bin/bash
# Submit a qbench sweep as a SLURM array (one task per cell) plus one job, run after every task
# succeeded, that compares and reports the sweep (`qbench sweep FILE`: every cell is finished, so
# it only runs the comparison and writes the report). Usage: tools/slurm/submit.sh SWEEP.yaml [sbatch flags]
set -euo pipefail
SWEEP="${1:?usage: tools/slurm/submit.sh SWEEP.yaml [sbatch flags]}"
shift
HERE="$(cd "$(dirname "$0")" && pwd)"
N=$("${QBENCH:-qbench}" sweep "$SWEEP" --list-cells | grep -vc '^#')
[ "$N" -gt 0 ] || { echo "no cells in $SWEEP" >&2; exit 1; }
JOB=$(sbatch --parsable --array="0-$((N - 1))" "$@" "$HERE/sweep_array.sbatch" "$SWEEP")
echo "array job $JOB: $N cells"
sbatch --parsable --dependency="afterok:${JOB%%;*}" --job-name=qbench-report --wrap="${QBENCH:-qbench} sweep '$SWEEP' --no-progress" "$@"
