#!/usr/bin/env bash
# The GPU budget check: on a machine with one GPU, in under 8 minutes of wall time,
#   1. stage 1, ViT-B/16 at 224 px under bf16 autocast: images/s and MFU against the measured
#      bf16 matmul peak (bench/pretrain.py);
#   2. Finetuning (ViT-B/16) and Mapping Network steps/s and peak memory (bench/stage2.py);
#   3. the sensitivity cross-validation with a 10x step budget (`deepfakemae demo --folds 5
#      --sensitivity --step-scale 10`: 4,000 / 9,600 / 6,000 steps for stage 1 / Finetuning /
#      Mapping), its five folds as parallel processes on the one GPU, then pooled.
# The demo set and its faces are built beforehand on a CPU (the face pipeline is CPU work):
#
#   bash bench/gpu_check.sh --prepare     # on a CPU machine (= make demo-sensitivity-cache):
#                                         # data/demo-sensitivity/{raw,cache}, ~6 min on 2 cores
#   bash bench/gpu_check.sh               # on the GPU machine, with data/demo-sensitivity copied
#
# Every step runs under `timeout` (60 s + 60 s + 270 s for the folds at once + 120 s for pooling,
# premise and W&B: 8.5 min at worst), so the check ends inside its budget and says which part did
# not finish in time. Not yet run on a GPU: whether five 10x folds fit 270 s is the open question
# (per fold 4,000 + 9,600 + 6,000 steps of tiny models, loader- and launch-bound, then 64 videos
# of test and 64 of validation speakers, the second draw; it writes every stage's "done in N s" to times.txt either way). Figures go to $OUT_DIR (default runs/gpu_check): gpu.txt, pretrain.txt,
# stage2.txt, fold_<i>.log, cv.log, times.txt; the CV itself to runs/demo-sensitivity-x10.
# Environment: PY (default .venv/bin/python, else python3), DATA (data/demo-sensitivity), RUNS
# (runs), FOLDS (5), SCALE (10), FOLD_LIMIT (270 s per fold, all folds at once), DEMO_ARGS (extra
# `deepfakemae demo` options, e.g. "--strengths 0 3 --frames 6 --max-steps 2" for a tiny check).
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
DATA=${DATA:-data/demo-sensitivity}
RUNS=${RUNS:-runs}
OUT_DIR=${OUT_DIR:-$RUNS/gpu_check}
FOLDS=${FOLDS:-5}
SCALE=${SCALE:-10}
FOLD_LIMIT=${FOLD_LIMIT:-270}
read -r -a EXTRA <<< "${DEMO_ARGS:-}"
export NO_ALBUMENTATIONS_UPDATE=1 WANDB_SILENT=true WANDB_MODE=${WANDB_MODE:-offline}
DEMO=("$PY" -m deepfakemae.cli demo --folds "$FOLDS" --sensitivity --data-dir "$DATA"
      --run-root "$RUNS" "${EXTRA[@]}")

if [[ "${1:-}" == "--prepare" ]]; then
  # CPU side: the demo set at artifact strengths 0-3 and its face cache, then stop
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "${DEMO[@]}" --prepare-only
  echo "prepared $DATA; copy it to the GPU machine and run: bash bench/gpu_check.sh"
  exit 0
elif [[ -n "${1:-}" ]]; then
  echo "usage: bash bench/gpu_check.sh [--prepare]" >&2
  exit 2
fi

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device visible to $PY; this check needs one GPU" >&2
  exit 1
fi
if [[ ! -f "$DATA/cache/cache.json" || ! -f "$DATA/raw/demo_sources.json" ]]; then
  echo "gpu_check: no prepared demo set under $DATA; build it first (on a CPU is fine):" \
       "bash bench/gpu_check.sh --prepare" >&2
  exit 1
fi
mkdir -p "$OUT_DIR"
export PRECISION=bf16-mixed OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
start=$(date +%s)
stamp() { echo "$1: $(( $(date +%s) - start )) s" | tee -a "$OUT_DIR/times.txt"; }
: > "$OUT_DIR/times.txt"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  | tee "$OUT_DIR/gpu.txt" || true

# 1. stage 1: ViT-B/16 at 224, fp32 then bf16 (the bf16 "of matmul" column is the MFU)
timeout 60 "$PY" bench/pretrain.py --device cuda --presets mae_vit_base_patch16 --batch 64 \
  --steps 10 | tee "$OUT_DIR/pretrain.txt" || echo "pretrain bench: failed or over 60 s" | tee -a "$OUT_DIR/pretrain.txt"
stamp "stage-1 bench"

# 2. stage 2: Mapping meta/plain steps and Finetuning ViT-B/16 steps, with peak memory
timeout 60 "$PY" bench/stage2.py --device cuda --presets mae_vit_base_patch16 --steps 10 \
  --steps-base 10 --warmup 2 --map-batch 32 --ft-batch-base 16 \
  | tee "$OUT_DIR/stage2.txt" || echo "stage-2 bench: failed or over 60 s" | tee -a "$OUT_DIR/stage2.txt"
stamp "stage-2 bench"

# 3. the sensitivity CV, 10x steps: every fold at once, then the pooling run (all folds done)
pids=()
for ((i = 0; i < FOLDS; i++)); do
  timeout "$FOLD_LIMIT" "${DEMO[@]}" --step-scale "$SCALE" --fold "$i" \
    > "$OUT_DIR/fold_$i.log" 2>&1 &
  pids+=($!)
done
failed=()
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || failed+=("$i")
done
stamp "folds (parallel, limit $FOLD_LIMIT s)"
grep -h " done in " "$OUT_DIR"/fold_*.log | tee -a "$OUT_DIR/times.txt" || true
if (( ${#failed[@]} )); then
  echo "folds ${failed[*]} failed or ran past $FOLD_LIMIT s (their logs: $OUT_DIR/fold_<i>.log);" \
       "the ${SCALE}x budget does not fit this check as it stands" | tee -a "$OUT_DIR/times.txt"
  exit 1
fi
timeout 120 "${DEMO[@]}" --step-scale "$SCALE" | tee "$OUT_DIR/cv.log"
stamp "pooled (total)"
