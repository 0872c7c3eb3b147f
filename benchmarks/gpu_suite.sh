#!/usr/bin/env bash
# Every vqzoo speed benchmark on one GPU, in at most 8 minutes on one H100/H200:
#   bash benchmarks/gpu_suite.sh                      # --device cuda --dtype bf16, writes benchmarks/results/gpu_*.json/.md
#   bash benchmarks/gpu_suite.sh --device cpu --quick # the CPU smoke run (tiny sizes; writes cpu_quick_*.json/.md)
# Options: --device DEV (cuda), --dtype fp32|bf16 (bf16 on cuda, fp32 on cpu), --quick, --out-dir DIR (benchmarks/results).
# Each step has its own time limit, so one slow step cannot eat the others' time; a step that fails or
# runs out of time is recorded as such in the summary and the suite goes on.
# Peers (taming-transformers, vector-quantize-pytorch, muse-maskgit, diffusers) come from the `bench` extra.
set -u
cd "$(dirname "$0")/.."
DEVICE=cuda; DTYPE=""; QUICK=""; OUT=benchmarks/results
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2;;
    --dtype) DTYPE="$2"; shift 2;;
    --quick) QUICK="--quick"; shift;;
    --out-dir) OUT="$2"; shift 2;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
# bf16 on GPUs; fp32 on CPU by default (bf16 convolutions are emulated on most CPUs: 50x slower)
[ -z "$DTYPE" ] && case "$DEVICE" in cuda*) DTYPE=bf16;; *) DTYPE=fp32;; esac
case "$DEVICE" in cuda*) P=gpu_;; *) P="${DEVICE%%:*}${QUICK:+_quick}_";; esac
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONWARNINGS=ignore
[ "${DEVICE%%:*}" = cpu ] && export OMP_NUM_THREADS=1
PY=${PYTHON:-python3}
STATUS="$OUT/${P}suite_status.txt"; : > "$STATUS"
START=$(date +%s)

# CPU smoke runs get twice the time (imports and a shared machine); the GPU limits sum to 475 s.
SCALE=1; case "$DEVICE" in cuda*) ;; *) SCALE=2;; esac
COMPILE_BACKEND=inductor; case "$DEVICE" in cuda*) ;; *) COMPILE_BACKEND=aot_eager;; esac

step() {  # step NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$(( $2 * SCALE )); shift 2
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/${P}${name}.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$(( $(date +%s) - t0 ))" | tee -a "$STATUS"
  tail -n 4 "$OUT/${P}${name}.log"
}

if [ -n "$QUICK" ]; then TS_ARGS=""; else TS_ARGS="--ch 128 --batch 32 --repeats 10 --warmup 3"; fi
step train_step 100 $PY benchmarks/train_step.py --device "$DEVICE" --dtype "$DTYPE" --threads 1 $TS_ARGS $QUICK \
  --out "$OUT/${P}train_step.json"
step quantizer 45 $PY benchmarks/quantizer_speed.py --device "$DEVICE" --dtype "$DTYPE" --threads 1 $QUICK \
  --out "$OUT/${P}quantizer_speed.json"
step sampling 60 $PY benchmarks/sampling_speed.py --device "$DEVICE" --dtype "$DTYPE" --threads 1 $QUICK \
  --out "$OUT/${P}sampling_speed.json"
step movq_decoder 25 $PY benchmarks/movq_decoder_speed.py --device "$DEVICE" --dtype "$DTYPE" $QUICK \
  --out "$OUT/${P}movq_decoder_speed.json"
step fit_sync 150 $PY benchmarks/fit_sync_warnings.py --device "$DEVICE" --dtype "$DTYPE" $QUICK \
  --out "$OUT/${P}fit_sync_warnings.json"
step prior_mfu 35 $PY benchmarks/prior_mfu.py --device "$DEVICE" --dtype "$DTYPE" $QUICK \
  --out "$OUT/${P}prior_mfu.json"
step prior_mfu_compiled 60 $PY benchmarks/prior_mfu.py --device "$DEVICE" --dtype "$DTYPE" --compile \
  --backend "$COMPILE_BACKEND" $QUICK \
  --out "$OUT/${P}prior_mfu_compiled.json"
$PY benchmarks/suite_report.py --dir "$OUT" --prefix "$P" --seconds $(( $(date +%s) - START ))
