#!/usr/bin/env bash
# Submit one Slurm array task per specimen folder (not run in CI):
#   ls -d specimens/*/ > specimens.txt
#   sbatch --array=1-$(wc -l < specimens.txt) examples/slurm_array.sh specimens.txt
# Each task reconstructs line $SLURM_ARRAY_TASK_ID of the list. --time-limit stops a few minutes
# before the Slurm limit with a checkpoint (exit 3) and the task requeues itself; the requeued task
# continues with --resume. Adjust partition, GPU and time to your cluster.
#SBATCH --job-name=ctdip
#SBATCH --output=logs/ctdip_%A_%a.out
#SBATCH --time=04:00:00
#SBATCH --cpus-per-task=8
#SBATCH --gres=gpu:1
#SBATCH --requeue
set -uo pipefail
LIST="${1:?usage: sbatch --array=1-N $0 LIST_OF_SCAN_DIRS}"
CTDIP="${CTDIP:-ctdip}"
METHOD="${METHOD:-edip}"
RUNS="${RUNS:-runs/slurm}"
SETUP="${SETUP:-walnut-3d-sparse-20}"

scan="$(sed -n "${SLURM_ARRAY_TASK_ID}p" "$LIST")"
name="$(basename "${scan%/}")"
run="$RUNS/$name"
mkdir -p "$RUNS" logs
if [ -f "$run/summary.json" ]; then echo "done: $run"; exit 0; fi
if [ -f "$run/config.yaml" ]; then
  "$CTDIP" reconstruct --resume "$run" --time-limit 03:50:00 --quiet
else
  "$CTDIP" reconstruct "$scan" --method "$METHOD" --setup "$SETUP" -o "$run" --time-limit 03:50:00 --quiet
fi
rc=$?
if [ "$rc" -eq 3 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
fi
exit $rc
