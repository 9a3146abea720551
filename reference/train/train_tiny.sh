#!/usr/bin/env bash
# The shipped `tiny` run: VAE -> teacher -> LCD, each stage resumable (sizes from the environment).
#   nohup nice -n 15 reference/train/train_tiny.sh runs/tiny > runs/train.log 2>&1 &
# Re-running continues from the last checkpoint of the unfinished stage; finished stages are skipped.
# Then: .venv/bin/python benchmarks/quality_tiny.py --teacher runs/tiny/teacher/model --student runs/tiny/lcd/model
set -euo pipefail
RUN=${1:-runs/tiny}
PY=${PY:-.venv/bin/python}
VAE_STEPS=${VAE_STEPS:-600}
TEACHER_STEPS=${TEACHER_STEPS:-2000}
LCD_STEPS=${LCD_STEPS:-400}
LCD_LR=${LCD_LR:-1e-4}
NUM_IMAGES=${NUM_IMAGES:-2048}
mkdir -p "$RUN"
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }
[ -d "$RUN/vae/vae" ] || { stamp vae; $PY -m reference.train.vae --out "$RUN/vae" --steps "$VAE_STEPS" \
    --batch-size 8 --no-progress; }
[ -d "$RUN/teacher/model" ] || { stamp teacher; $PY -m reference.train.teacher --vae "$RUN/vae/vae" \
    --out "$RUN/teacher" --steps "$TEACHER_STEPS" --num-images "$NUM_IMAGES" --cache-dir "$RUN/cache" --no-progress; }
[ -d "$RUN/lcd/model" ] || { stamp lcd; $PY -m reference.train.lcd --teacher "$RUN/teacher/model" \
    --out "$RUN/lcd" --steps "$LCD_STEPS" --lr "$LCD_LR" --num-images "$NUM_IMAGES" --cache-dir "$RUN/cache" --no-progress; }
stamp done
