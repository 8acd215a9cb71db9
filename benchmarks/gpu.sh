#!/usr/bin/env bash
# The H100 setting of issue 10 in one shot: Conv4-64, 84×84×3, 5-way 1-shot, 15 queries,
# meta-batch 4, BatchNorm (and GroupNorm for reference), K = 1 and K = 5, CUDA peak memory.
# Writes peers_gpu_k1.{json,md} and peers_gpu_k5.{json,md} into $OUT (default: the current folder).
#
#   bash benchmarks/gpu.sh                 # needs a CUDA device; ~2-4 minutes on an H100
#   OUT=/tmp/bench ROUNDS=10 bash benchmarks/gpu.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${OUT:-.}"
rounds="${ROUNDS:-7}"
mkdir -p "$out"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for k in 1 5; do
  python "$here/peers.py" --device cuda --width 64 --size 84 --channels 3 --ways 5 --shots 1 \
    --queries 15 --tasks 4 --steps "$k" --rounds "$rounds" --norms batch group \
    --out "$out/peers_gpu_k$k.json" | tee "$out/peers_gpu_k$k.md"
done
