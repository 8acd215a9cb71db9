#!/usr/bin/env bash
# The evidence protocol of docs/results.md at the papers' budget, on one GPU, in one command:
# 60k meta-iterations per run, Conv4-64 with training-mode BatchNorm (MAML's backbone), every
# method, 3 seeds, map meta step sizes tuned on meta-validation. Resumable: rerun the same line
# after an interruption (or on another machine with the runs folder copied over).
#
#   bash benchmarks/evidence_gpu.sh [RUNS_DIR]
#
# Writes RUNS_DIR/results.md and docs/gpu/results.md with the plots in docs/gpu/img/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/evidence-gpu}
python -m mirroropt reproduce --out "$out" --device cuda \
    --iterations 60000 --width 64 --norm batch \
    --val-every 1000 --val-tasks 300 --eval-tasks 600 \
    --settings fontglot-5w1s fontglot-aug-20w1s \
    --workers 1 --no-progress --publish docs/gpu
