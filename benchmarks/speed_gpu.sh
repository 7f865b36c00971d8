#!/usr/bin/env bash
# Issue "K-SSM and the fusion hybrids at transformer speed" on one GPU: our RWKV-6, SSD and
# bistable-bank kernels checked against their references on the card, then K-SSM and the fusion
# models timed beside their GPT baselines in one process each.
#
# Stages (STAGES, in order; default all):
#   env          versions and the card
#   tests        the kernels' own CPU tests, run on CUDA (no interpreter): tests/ops/test_ssd.py,
#                tests/ops/test_bistable_bank.py (their tensors follow the card; RWKV-6 is checked by the next stage) → $OUT/tests.log
#   check-rwkv6  benchmarks/check_fast_paths.py --only rwkv6 (first-call cost, steady ms, accuracy
#                at several shapes, fp32 and bf16) → $OUT/fast_paths.json
#   kssm         benchmarks/kssm_profile.py: compiled tokens/s of every SSD × bank backend pair and
#                the GPT baseline, and a step's breakdown by module group → $OUT/kssm_profile.json
#   fusion       phaselm bench: GF-MH, RWKV-6 and Mamba-2 against the GPT-2 baseline, batch 16 × 512,
#                eager and compiled → $OUT/bench-fusion/
# Example:  STAGES="env tests check-rwkv6 kssm" OUT=$OUT bash benchmarks/speed_gpu.sh
set -uo pipefail
OUT=${OUT:-runs/speed-gpu}
STAGES=${STAGES:-env tests check-rwkv6 kssm fusion}
source "$(dirname "$0")/device_env.sh"
mkdir -p "$OUT"
for stage in $STAGES; do
  echo "=== $stage $(date -u +%H:%M:%S)"
  case $stage in
    env) nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
         python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)" ;;
    tests) python3 -m pytest -q -p no:cacheprovider tests/ops/test_ssd.py tests/ops/test_bistable_bank.py \
             > "$OUT/tests.log" 2>&1; echo "pytest exit $?"; tail -n 15 "$OUT/tests.log" ;;
    check-rwkv6) python3 benchmarks/check_fast_paths.py --only rwkv6 --out "$OUT" ;;
    kssm) python3 benchmarks/kssm_profile.py ${KSSM_ARGS:-} ;;  # e.g. KSSM_ARGS="--settings default:foreach,reduce-overhead:fused --no-breakdown"
    fusion) # GF-MH first (the issue's headline target), then the pure models; each bench bounded so
            # that the first one's table survives a short call
            for models in "recipes/fusion-gf-mh.toml" "recipes/rwkv6.toml recipes/mamba2.toml"; do
              name=$(basename "${models%% *}" .toml)
              timeout "${BENCH_LIMIT:-330}" python3 -m phaselm bench $models --baseline recipes/gpt2-fusion-baseline.toml \
                --batches 16 --compile-batches 16 --contexts 64 --set gpt.n_positions=4160 --out "$OUT/bench-$name"
              cat "$OUT/bench-$name/bench.md" 2>/dev/null
            done ;;
    *) echo "unknown stage $stage" ;;
  esac
done
ls -la "$OUT"
