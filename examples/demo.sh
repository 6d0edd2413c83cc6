#!/usr/bin/env bash
# `make demo`: simulate a small fan-beam walnut scan and reconstruct it (< 5 min on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
CTDIP="${CTDIP:-.venv/bin/ctdip}"
OUT="${OUT:-demo-output}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

rm -rf "$OUT"
mkdir -p "$OUT"
echo "== simulate: 128^2 fan-beam walnut phantom, 60 views, 5 % Gaussian noise"
"$CTDIP" simulate "$OUT/walnut-scan" --phantom walnut --geometry fan --size 128 --angles 60 --noise 0.05 --seed 0

echo "== fbp"
"$CTDIP" reconstruct "$OUT/walnut-scan" --method fbp -o "$OUT/fbp"
echo "== pdhg-tv (isotropic TV, 300 iterations)"
"$CTDIP" reconstruct "$OUT/walnut-scan" --method pdhg-tv -o "$OUT/pdhg-tv"
# Deep Image Prior with the light network (DEMO_DIP=0 skips it):
if [ "${DEMO_DIP:-1}" = "1" ]; then
  echo "== vanilla DIP (light network)"
  "$CTDIP" reconstruct "$OUT/walnut-scan" --method vanilla --network light --iterations 600 -o "$OUT/vanilla"
fi

echo
echo "Results:"
for run in "$OUT"/*/; do
  [ -f "$run/recon.tif" ] || continue
  echo "  ${run%/}/recon.tif   ${run%/}/preview.png"
done
