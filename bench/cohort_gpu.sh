#!/usr/bin/env bash
# The data-path benchmark (bench/cohort_epoch.py) on one CUDA GPU, float32 and bf16 autocast,
# after the CUDA tests of the loader (run from the repository root with the package
# installed). Writes cohort_epoch_cuda_{none,bf16}.{json,txt} into the folder given
# (default r2t_runs/bench_cohort_gpu); the generated cohort stays in r2t_runs/bench_cohort.
set -euo pipefail
out=${1:-r2t_runs/bench_cohort_gpu}
mkdir -p "$out"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
python -m pytest -q -p no:cacheprovider tests/data/test_loader.py tests/test_train.py -k cuda
for amp in none bf16; do
  python bench/cohort_epoch.py --device cuda --amp "$amp" --workers 4 \
    --json "$out/cohort_epoch_cuda_$amp.json" | tee "$out/cohort_epoch_cuda_$amp.txt"
done
