#!/usr/bin/env bash
# Batch reconstruction of a specimen collection on one workstation, then an evaluation table.
#
#   bash examples/batch_specimens.sh [WORKDIR]       (default WORKDIR: ./batch_demo)
#
# 1. simulates four small fan-beam specimens (stand-ins for your scan folders);
# 2. reconstructs all of them with `ctdip batch` on a local process pool: one run folder per
#    specimen under WORKDIR/runs/, --jobs parallel specimens, each with cores/jobs torch threads;
# 3. runs the same command again: finished specimens are skipped (an interrupted batch, e.g. by
#    Ctrl-C, resumes exactly where it stopped); the same folder with other settings is refused
#    (exit 2) unless --rerun;
# 4. compares two methods on every specimen with `ctdip evaluate` (tables + plots).
set -euo pipefail
WORK=${1:-batch_demo}
mkdir -p "$WORK"

for i in 1 2 3 4; do
  [ -d "$WORK/specimens/walnut$i" ] || \
    ctdip simulate "$WORK/specimens/walnut$i" --phantom walnut --geometry fan --angles 60 --size 64 \
      --noise 0.05 --seed "$i"
done

# Exit code 1 (and a list on stderr) if some specimen failed; the others still finish.
ctdip batch "$WORK"/specimens/*/ --method cgls --angles 30 -o "$WORK/runs/cgls" --jobs 2
ctdip batch "$WORK"/specimens/*/ --method tv --angles 30 --iterations 300 -o "$WORK/runs/tv" --jobs 2

# Second call: everything is already finished, nothing is recomputed.
ctdip batch "$WORK"/specimens/*/ --method tv --angles 30 --iterations 300 -o "$WORK/runs/tv" --jobs 2

# Other settings into the same folder: refused in one line, nothing runs (--rerun would redo them).
if ctdip batch "$WORK"/specimens/*/ --method tv --angles 30 --iterations 200 -o "$WORK/runs/tv"; then
  echo "expected a refusal" >&2; exit 1
fi

# The summaries: runs/<method>/batch_summary.{csv,md,json}; a cross-method table and plots for one specimen:
ctdip evaluate "$WORK"/runs/*/walnut1 --format md -o "$WORK/evaluation_walnut1"
