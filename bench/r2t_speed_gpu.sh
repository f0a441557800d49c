#!/usr/bin/env bash
# The R²T speed/memory benchmark on one CUDA GPU, float32 and bf16 autocast (run from the
# repository root with the package installed). Writes r2t_speed_cuda_{fp32,bf16}.{json,txt}.
set -euo pipefail
out=${1:-.}
for dtype in fp32 bf16; do
  python -m r2t_plugin.r2t.bench --device cuda --dtype "$dtype" --repeats 5 --naive-max-gb 20 \
    --json "$out/r2t_speed_cuda_$dtype.json" | tee "$out/r2t_speed_cuda_$dtype.txt"
done
