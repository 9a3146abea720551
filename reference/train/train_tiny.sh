#!/usr/bin/env bash
# The shipped `tiny` run: VAE -> teacher -> LCD, each stage resumable (sizes from the environment).
#   nohup nice -n 5 reference/train/train_tiny.sh runs/tiny > runs/train.log 2>&1 &
# Re-running continues from the last checkpoint of the unfinished stage; finished stages are skipped.
# LAUNCH runs each stage: the default is 2 data-parallel CPU processes (torchrun, gloo), which on the
# 2-core machine beats one process with 2 threads on these small matrices; on GPUs use
# LAUNCH="accelerate launch --multi_gpu --num_processes N -m".
# Data: the on-the-fly scene stream (STREAM: a window of 16 x 512 scenes, one chunk of 512 new scenes
# every 128 steps); NUM_IMAGES=N > 0 trains on a fixed set of N scenes instead.
# On a GPU, reference/train/gpu_run.py runs teacher arms, selection, LCD and the benchmark in one go.
# Then: .venv/bin/python benchmarks/quality_tiny.py --teacher runs/tiny/teacher/model --student runs/tiny/lcd/model
set -euo pipefail
RUN=${1:-runs/tiny}
PY=${PY:-.venv/bin/python}
LAUNCH=${LAUNCH:-.venv/bin/torchrun --standalone --nproc_per_node 2 -m}
VAE_STEPS=${VAE_STEPS:-600}
TEACHER_STEPS=${TEACHER_STEPS:-10000}
TEACHER_LR=${TEACHER_LR:-1e-3}
LCD_STEPS=${LCD_STEPS:-1500}
LCD_LR=${LCD_LR:-1e-4}
NUM_IMAGES=${NUM_IMAGES:-0}
STREAM=${STREAM:---window 16 --chunk 512 --refresh 128}
mkdir -p "$RUN"
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }
[ -d "$RUN/vae/vae" ] || { stamp vae; $PY -m reference.train.vae --out "$RUN/vae" --steps "$VAE_STEPS" \
    --batch-size 8 --no-progress; }
[ -d "$RUN/teacher/model" ] || { stamp teacher; $LAUNCH reference.train.teacher --vae "$RUN/vae/vae" \
    --out "$RUN/teacher" --steps "$TEACHER_STEPS" --lr "$TEACHER_LR" --num-images "$NUM_IMAGES" $STREAM \
    --cache-dir "$RUN/cache" --no-progress; }
[ -d "$RUN/lcd/model" ] || { stamp lcd; $LAUNCH reference.train.lcd --teacher "$RUN/teacher/model" \
    --out "$RUN/lcd" --steps "$LCD_STEPS" --lr "$LCD_LR" --num-images "$NUM_IMAGES" $STREAM --cache-dir "$RUN/cache" \
    --no-progress; }
stamp done
