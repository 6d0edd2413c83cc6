#!/usr/bin/env bash
# GPU check for ctdip, one command on a bare GPU machine (no astra-toolbox, no network):
#
#   bash benchmarks/gpu_check.sh OUT_DIR [--quick]          # OUT_DIR also from $OUT
#   CTDIP_GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh /tmp/out --quick   # dry run on CPU
#   (CTDIP_GPU_CHECK_HIDE_ASTRA=1: `import astra` fails, as on the GPU machine; PYTHON=...: interpreter)
#
# Needs, beside the working tree, benchmarks/gpu_payload/ (git-ignored; build it on a CPU machine
# with ASTRA: `.venv/bin/python benchmarks/gpu_payload.py`, ~30 s, ~5 MiB): the system matrices of
# the checked geometries in a $CTDIP_CACHE_DIR, a 64² scan, and pytest as pure Python in case the
# machine has none. Steps (each under its own time limit; the whole check < 8 min on one GPU):
#   0. environment (python, torch, CUDA device) and `pip install --no-deps -e .` (falls back to
#      PYTHONPATH when pip cannot build offline)
#   a. tests/test_device.py on the device for the torch and matrix backends (CTDIP_TEST_DEVICE)
#   b. vanilla and tv `ctdip reconstruct` of the 64² scan, on the device and on CPU, same seed,
#      for both backends: returned PSNRs within 0.1 dB
#   c. benchmarks/bench_step.py on the device: DIP step of light/paper at 128², 256², 501², the
#      3d U-Net at 64³ and 128³ (torch backend), default and channels_last
# Writes into OUT_DIR: summary.md (results of a-c and the step table), gpu_step.md, compare.md,
# tests.txt, env.txt, gpu_check.log. Exit status 0 when a and b pass and c ran.
set -uo pipefail

QUICK=0
OUT_ARG=""
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) OUT_ARG="$a" ;;
  esac
done
OUT_DIR="${OUT_ARG:-${OUT:-}}"
if [ -z "$OUT_DIR" ]; then echo "error: give the output folder (argument or \$OUT)" >&2; exit 2; fi
mkdir -p "$OUT_DIR" && OUT_DIR="$(cd "$OUT_DIR" && pwd)"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEVICE="${CTDIP_GPU_CHECK_DEVICE:-cuda}"
PY="${PYTHON:-python3}"
PAYLOAD="${CTDIP_GPU_PAYLOAD:-$ROOT/benchmarks/gpu_payload}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ctdip-gpu-check.XXXXXX")"
exec > >(tee "$OUT_DIR/gpu_check.log") 2>&1
T0=$SECONDS
declare -A STATUS
stamp() { echo "[$((SECONDS - T0)) s] $*"; }

if [ "$QUICK" = 1 ]; then
  ITERS=10; SIZES="32"; SIZES3D="16"; REPEATS=1; T_TEST=300; T_CMP=300; T_STEP=300
else
  ITERS=300; SIZES="128 256 501"; SIZES3D="64 128"; REPEATS=3; T_TEST=150; T_CMP=120; T_STEP=240
fi

stamp "ctdip GPU check: device $DEVICE, quick=$QUICK, out $OUT_DIR"
if [ ! -f "$PAYLOAD/MANIFEST.txt" ]; then
  echo "error: $PAYLOAD/MANIFEST.txt missing: build the payload first (python benchmarks/gpu_payload.py)" >&2
  exit 2
fi
# one start-up shim for every Python the check runs: CTDIP_GPU_CHECK_HIDE_ASTRA=1 makes `import astra`
# fail (as on a machine without astra-toolbox); CTDIP_GPU_CHECK_NO_TF32=1 (step b's extra device runs)
# turns TF32 off (torch's default lets cuDNN convolutions use it)
mkdir -p "$WORK/shim" && cat >"$WORK/shim/sitecustomize.py" <<'EOF'
import os
import sys
if os.environ.get("CTDIP_GPU_CHECK_HIDE_ASTRA") == "1":
    sys.modules["astra"] = None
if os.environ.get("CTDIP_GPU_CHECK_NO_TF32") == "1":
    import torch
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
EOF
export PYTHONPATH="$WORK/shim${PYTHONPATH:+:$PYTHONPATH}"
# a writable copy of the shipped cache (the check's runs may add norms to it)
cp -r "$PAYLOAD/cache" "$WORK/cache"
export CTDIP_CACHE_DIR="$WORK/cache"

# ---------------------------------------------------------------- 0. environment and install
{
  echo "date: $(date -u +%FT%TZ)"; echo "host: $(uname -srm)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" - <<'EOF'
import platform, importlib.util, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device 0:", torch.cuda.get_device_name(0))
import importlib.metadata as md
for m, dist in (("astra", "astra-toolbox"), ("pytest", "pytest"), ("typer", "typer"), ("click", "click"),
                ("rich", "rich"), ("scipy", "scipy"), ("tifffile", "tifffile"), ("yaml", "pyyaml"),
                ("matplotlib", "matplotlib"), ("setuptools", "setuptools")):
    try:
        v = md.version(dist)
    except md.PackageNotFoundError:
        v = "?"
    print(f"  {m}: {v if importlib.util.find_spec(m) else 'NO'}")
EOF
  echo "payload:"; sed -n '1,2p' "$PAYLOAD/MANIFEST.txt"; tail -1 "$PAYLOAD/MANIFEST.txt"
} | tee "$OUT_DIR/env.txt"

if "$PY" -m pip install --no-deps --no-build-isolation -q -e "$ROOT" >"$WORK/pip.log" 2>&1; then
  STATUS[install]="PASS (pip install --no-deps --no-build-isolation -e .)"
else
  tail -3 "$WORK/pip.log"
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  STATUS[install]="pip install failed offline (see gpu_check.log); ctdip used from the tree via PYTHONPATH"
fi
if ! "$PY" -c "import pytest" 2>/dev/null; then
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PAYLOAD/pylib"
  echo "pytest: from the payload (pure Python)"
fi
"$PY" -c "import ctdip, ctdip.cli.main; print('ctdip', ctdip.__version__, 'from', ctdip.__file__)" \
  || { echo "error: ctdip does not import" >&2; exit 1; }
stamp "0. install: ${STATUS[install]}"
CLI=("$PY" -c "import sys; from ctdip.cli.main import main; sys.exit(main())")

# ---------------------------------------------------------------- a. device-agnostic tests
stamp "a. tests/test_device.py on $DEVICE (backends torch, matrix)"
CTDIP_TEST_DEVICE="$DEVICE" CTDIP_TEST_BACKENDS="torch,matrix" CTDIP_TEST_THREADS=4 \
  timeout "$T_TEST" "$PY" -m pytest -q -p no:cacheprovider -rA tests/test_device.py >"$OUT_DIR/tests.txt" 2>&1
rc=$?
tail -25 "$OUT_DIR/tests.txt"
if [ $rc = 0 ]; then STATUS[a]="PASS ($(tail -1 "$OUT_DIR/tests.txt" | tr -d '='))"; else STATUS[a]="FAIL (rc $rc: $(tail -1 "$OUT_DIR/tests.txt" | tr -d '='))"; fi
stamp "a. ${STATUS[a]}"

# ---------------------------------------------------------------- b. device vs CPU runs
stamp "b. vanilla and tv, $ITERS iterations, $DEVICE vs cpu"
rc_b=0
METHODS="vanilla tv"  # each needs its matrices in the payload: CHECKED_METHODS in gpu_payload.py
for m in $METHODS; do
  for b in matrix torch; do
    for dev in cpu "$DEVICE"; do
      run="$WORK/runs/$m-$b-$dev"
      [ -e "$run" ] && continue  # dry run on CPU: the device run is the CPU run
      timeout "$T_CMP" "${CLI[@]}" reconstruct "$PAYLOAD/scan64" -m "$m" -n "$ITERS" --seed 0 --backend "$b" \
        --device "$dev" -o "$run" -q || { echo "run $m $b $dev failed"; rc_b=1; }
    done
    if [ "$DEVICE" != cpu ]; then  # informative: the same device run with TF32 off
      CTDIP_GPU_CHECK_NO_TF32=1 timeout "$T_CMP" "${CLI[@]}" reconstruct "$PAYLOAD/scan64" \
        -m "$m" -n "$ITERS" --seed 0 --backend "$b" --device "$DEVICE" -o "$WORK/runs/$m-$b-notf32" -q \
        || echo "run $m $b $DEVICE without TF32 failed (informative only)"
    fi
  done
done
"$PY" - "$WORK/runs" "$DEVICE" "$OUT_DIR/compare.md" "$ITERS" "$METHODS" <<'EOF' || rc_b=1
import json, sys
from pathlib import Path
runs, dev, out, iters, methods = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4], sys.argv[5].split()

def summary(name):
    return json.loads((runs / name / "summary.json").read_text())

lines = [f"| method | backend | PSNR cpu | PSNR {dev} | Δ dB | wall s cpu | wall s {dev} | within 0.1 dB "
         f"| PSNR {dev} TF32 off | Δ dB TF32 off |", "|---|---|---|---|---|---|---|---|---|---|"]
ok = True
for m in methods:
    for b in ("matrix", "torch"):
        try:
            s = {d: summary(f"{m}-{b}-{d}") for d in ("cpu", dev)}
        except (OSError, ValueError) as e:
            lines.append(f"| {m} | {b} | run missing: {e} | | | | | FAIL |"); ok = False; continue
        p = {d: s[d]["returned"]["psnr"] for d in s}
        d_db = p[dev] - p["cpu"]
        good = abs(d_db) <= 0.1
        ok &= good
        try:
            p32 = summary(f"{m}-{b}-notf32")["returned"]["psnr"]
            extra = f"{p32:.3f} | {p32 - p['cpu']:+.3f}"
        except (OSError, ValueError):
            extra = "– | –"
        lines.append(f"| {m} | {b} | {p['cpu']:.3f} | {p[dev]:.3f} | {d_db:+.3f} | {s['cpu']['wall_time_s']:.1f} | "
                     f"{s[dev]['wall_time_s']:.1f} | {'PASS' if good else 'FAIL'} | {extra} |")
text = (f"64² fan-beam walnut (30 views, 5 % noise), `ctdip reconstruct -m M -n {iters} --seed 0 --backend B "
        f"--device D`, returned PSNR (recon.tif vs reference.tif):\n\n" + "\n".join(lines) + "\n")
out.write_text(text)
print(text)
sys.exit(0 if ok else 1)
EOF
if [ $rc_b = 0 ]; then STATUS[b]="PASS"; else STATUS[b]="FAIL"; fi
stamp "b. ${STATUS[b]}"

# ---------------------------------------------------------------- c. step timings
stamp "c. bench_step.py on $DEVICE"
STEP_ARGS=(--device "$DEVICE" --backend torch --sizes $SIZES --sizes3d $SIZES3D --variants default channels_last
           --repeats "$REPEATS" --max-minutes 3 --skip --out "$OUT_DIR/gpu_step.md")
[ "$QUICK" = 1 ] && STEP_ARGS+=(--steps 1 --threads 1)
timeout "$T_STEP" "$PY" benchmarks/bench_step.py "${STEP_ARGS[@]}" >"$WORK/step.log" 2>&1
rc=$?
if [ $rc = 0 ]; then STATUS[c]="PASS (table in gpu_step.md)"; else STATUS[c]="FAIL (rc $rc, see gpu_check.log)"; fi
cat "$WORK/step.log"
stamp "c. ${STATUS[c]}"

# ---------------------------------------------------------------- summary
{
  echo "# ctdip GPU check ($([ "$QUICK" = 1 ] && echo 'quick dry run' || echo 'full')), device $DEVICE"
  echo
  echo "Command: \`$([ "${CTDIP_GPU_CHECK_HIDE_ASTRA:-0}" = 1 ] && echo "CTDIP_GPU_CHECK_HIDE_ASTRA=1 ")$([ "$DEVICE" != cuda ] && echo "CTDIP_GPU_CHECK_DEVICE=$DEVICE ")bash benchmarks/gpu_check.sh OUT$([ "$QUICK" = 1 ] && echo ' --quick')\`, $((SECONDS - T0)) s."
  echo; echo '```'; cat "$OUT_DIR/env.txt"; echo '```'; echo
  echo "| step | result |"; echo "|---|---|"
  [ "${CTDIP_GPU_CHECK_HIDE_ASTRA:-0}" = 1 ] && echo "| astra | hidden (import astra fails) |"
  echo "| 0 install | ${STATUS[install]} |"
  echo "| a tests/test_device.py on $DEVICE | ${STATUS[a]} |"
  echo "| b $DEVICE vs cpu runs | ${STATUS[b]} |"
  echo "| c step timings | ${STATUS[c]} |"
  echo; echo "## b. $DEVICE vs CPU"; echo; cat "$OUT_DIR/compare.md" 2>/dev/null
  echo; echo "## c. step timings"; echo; sed -n '3,$p' "$OUT_DIR/gpu_step.md" 2>/dev/null
} >"$OUT_DIR/summary.md"
stamp "done; summary in $OUT_DIR/summary.md"
rm -rf "$WORK"
[[ "${STATUS[a]}" == PASS* && "${STATUS[b]}" == PASS* && "${STATUS[c]}" == PASS* ]]
