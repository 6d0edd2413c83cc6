#!/usr/bin/env bash
# Batch reconstruction on a Slurm cluster through submitit (pip install 'ctdip[slurm]').
#
#   bash examples/batch_slurm.sh /path/to/specimens /path/to/runs
#
# Run it on a login node. `ctdip batch --executor slurm` submits ONE job array (one task per
# specimen not finished yet) with the resources below, then follows the tasks with a live table
# until they end. Job scripts and logs go to <runs>/slurm/. With --no-wait it returns right after
# submitting; run the same command again later to collect results: finished specimens are
# skipped and interrupted ones (time limit, preemption) resume from their checkpoint. Each run
# is told to checkpoint and stop 5 minutes before --time, so long DIP runs continue cleanly in
# the next submission; `scancel` (SIGTERM) makes a running DIP specimen checkpoint too. Ctrl-C
# here only stops following the jobs (exit 130); they keep running on the cluster. Changing a
# setting (say --iterations) for the same -o is refused unless --rerun (redo from scratch).
set -euo pipefail
SPECIMENS=${1:?usage: batch_slurm.sh SPECIMENS_DIR RUNS_DIR}
RUNS=${2:?usage: batch_slurm.sh SPECIMENS_DIR RUNS_DIR}

ctdip batch "$SPECIMENS"/*/ \
  --method edip --weights weights/walnut20.pt --setup walnut-2d-sparse-60 \
  --executor slurm \
  --partition gpu \
  --time 02:00:00 \
  --gpus 1 \
  --cpus 8 \
  --mem 32G \
  --array-parallelism 8 \
  --slurm-setup "module load cuda" \
  --device cuda \
  -o "$RUNS"

# The generated sbatch script (for checking the resources):  ls "$RUNS"/slurm/
# Status of every specimen:                                  cat "$RUNS"/batch_status.json
