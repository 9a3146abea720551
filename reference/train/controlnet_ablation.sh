#!/usr/bin/env bash
# PixArt-delta's ControlNet ablation on the miniature (issue #14): ControlNet-Transformer with N = 1, 2, 3
# copied blocks (of 6) and ControlNet-UNet (3 copies: the same parameters as N = 3), all on the frozen
# teacher, with equal steps, batch, learning rate, data (one cached set of scenes) and batches.
#   nohup reference/train/controlnet_ablation.sh runs/cn > runs/cn/ablation.log 2>&1 &
# Re-running resumes each unfinished arm from its checkpoint; finished arms are skipped. ARMS picks
# arms ("t3 u3 t1 t2"; a trailing m, as in t3m, trains on the silhouette condition instead of edges).
# LAUNCH runs each (default: one process; on 2+ cores or GPUs use
# LAUNCH=".venv/bin/torchrun --standalone --nproc_per_node 2 -m").
# FREE_LAYOUT (default 0) is the share of free-layout scenes (reference/train/layout.py, issue #24):
#   FREE_LAYOUT=0.5 STEPS=400 reference/train/controlnet_ablation.sh runs/cnl
# Then: .venv/bin/python benchmarks/controlnet_tiny.py --runs runs/cn (placement: benchmarks/controlnet_layout.py)
set -euo pipefail
RUN=${1:-runs/cn}
LAUNCH=${LAUNCH:-.venv/bin/python -m}
STEPS=${STEPS:-600}
BATCH=${BATCH:-32}
LR=${LR:-5e-4}
NUM_IMAGES=${NUM_IMAGES:-4096}
THREADS=${THREADS:-1}
FREE_LAYOUT=${FREE_LAYOUT:-0}
EVAL_EVERY=${EVAL_EVERY:-50}
ARMS=${ARMS:-t3 u3 t1 t2}
mkdir -p "$RUN"
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }
for arm in $ARMS; do
    condition=edge
    name=$arm
    case $arm in *m) condition=mask; arm=${arm%m} ;; esac
    case $arm in
        t*) design=transformer; copies=${arm#t} ;;
        u*) design=unet; copies=${arm#u} ;;
        *) echo "unknown arm $arm (t<N> or u<N>, then m for the silhouette condition)"; exit 2 ;;
    esac
    arm=$name
    [ -f "$RUN/$arm/summary.json" ] && { stamp "$arm done"; continue; }
    stamp "$arm: $design, $copies copies, $condition"
    $LAUNCH reference.train.controlnet --design "$design" --copies "$copies" --condition "$condition" --out "$RUN/$arm" \
        --steps "$STEPS" --batch-size "$BATCH" --lr "$LR" --num-images "$NUM_IMAGES" --cache-dir "$RUN/cache" \
        --threads "$THREADS" --ckpt-every 50 --eval-every "$EVAL_EVERY" --free-layout "$FREE_LAYOUT" --no-progress
done
stamp done
