#!/usr/bin/env bash
# Issue #4 on one GPU: fast paths against their references, the speed profile, and the recipe runs.
#
# Before the device call, put the wheels the device image lacks into .whl (ignored by git):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl tomli_w==1.2.0 flash-linear-attention==0.6.0 fla-core==0.6.0
# (fla's one other need, einops, is on the image). Then, with .whl carried:
#   STAGES="check bench" bash benchmarks/fusion_gpu.sh        # ~3 min
#   STAGES=train SEEDS="0 1 2" bash benchmarks/fusion_gpu.sh  # the seed spread of GF-MH / GPT-2
# Results under $OUT: fast_paths.json, bench.json/bench.md, and kssm_vs_gpt.sh's results.tgz.
set -uo pipefail
OUT=${OUT:-runs/fusion-gpu}
STAGES=${STAGES:-check bench train}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
for stage in $STAGES; do
  case $stage in
    check) python3 benchmarks/check_fast_paths.py --out "$OUT" ;;
    bench) python3 -m phaselm bench recipes/fusion-gf-mh.toml recipes/rwkv6.toml recipes/mamba2.toml \
             --baseline recipes/gpt2-fusion-baseline.toml --out "$OUT/bench" ;;
    train) for seed in ${SEEDS:-0}; do
             OUT="$OUT/seed-$seed" RECIPES="${RECIPES:-fusion-gf-mh gpt2-fusion-baseline rwkv6 mamba2}" \
               SET="train.seed=$seed ${SET:-}" bash benchmarks/kssm_vs_gpt.sh
           done ;;
    *) echo "unknown stage $stage (check, bench, train)"; exit 2 ;;
  esac
done
