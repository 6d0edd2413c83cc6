#!/usr/bin/env bash
# Reconstruct many specimen folders one after another, e.g.
#   examples/reconstruct_specimens.sh specimens/walnut*/
# Each specimen gets its own run folder under $RUNS (default runs/specimens/<name>); a finished
# run is skipped, and a run stopped by the time limit (exit 3) is continued with --resume.
set -uo pipefail
CTDIP="${CTDIP:-ctdip}"
METHOD="${METHOD:-pdhg-tv}"
RUNS="${RUNS:-runs/specimens}"
EXTRA=(${EXTRA:-})          # e.g. EXTRA="--setup walnut-2d-sparse-60 --iterations 500"
[ "$#" -gt 0 ] || { echo "usage: $0 SCAN_DIR [SCAN_DIR ...]" >&2; exit 2; }

failed=0
for scan in "$@"; do
  name="$(basename "${scan%/}")"
  run="$RUNS/$name"
  if [ -f "$run/summary.json" ]; then
    echo "skip $name (done: $run)"
    continue
  fi
  if [ -f "$run/config.yaml" ]; then
    "$CTDIP" reconstruct --resume "$run" --quiet
  else
    "$CTDIP" reconstruct "$scan" --method "$METHOD" -o "$run" --quiet "${EXTRA[@]}"
  fi
  rc=$?
  case $rc in
    0) echo "ok   $name -> $run/recon.tif" ;;
    3) echo "time $name (checkpoint written; run this script again to continue)" ;;
    *) echo "FAIL $name (exit $rc)"; failed=$((failed + 1)) ;;
  esac
done
exit $(( failed > 0 ? 1 : 0 ))
