#!/usr/bin/env bash
# Issue #4 on one GPU: fast paths against their references, the speed profile, and the recipe runs.
#
# Wheels first (.whl, see device_env.sh), carried with the call. The BPE recipes read the books
# from ../shared/data/gutenberg; on the device, carry a copy in .data and link it there first:
#   mkdir -p ../shared/data && ln -sfn "$PWD/.data/gutenberg" ../shared/data/gutenberg
# Stages (STAGES, in order):
#   check      benchmarks/check_fast_paths.py: fla / chunked / fused paths vs references → $OUT/fast_paths.json
#   bench      phaselm bench GF-MH, RWKV-6, Mamba-2 vs the GPT-2 baseline, batch 1/4/16/64 at seq 512,
#              eager, decode 64…4096 → $OUT/bench/bench.{json,md}   (run the bench stages alone on the GPU)
#   bench-compiled  the same under torch.compile at batch 16, RWKV-6 chunked → $OUT/bench-compiled/
#   train      char-level recipes: SEEDED (default: GF-MH and GPT-2) for every seed in SEEDS, SINGLE
#              (default: RWKV-6 and Mamba-2) for the first seed → $OUT/char/results.tgz
#   train-bpe  the BPE-16K recipes of BPE (default: all four), first seed → $OUT/bpe/results.tgz
# PARALLEL runs share the GPU during the train stages (their tokens/s are then not speeds), LIMIT caps
# each run in seconds, SET adds space-separated overrides to every run (e.g. "train.steps=1000"). Example:  STAGES="check bench" bash benchmarks/fusion_gpu.sh
set -uo pipefail
OUT=${OUT:-runs/fusion-gpu}
STAGES=${STAGES:-check bench bench-compiled train train-bpe}
SEEDS=${SEEDS:-0 1 2}
SEEDED=${SEEDED-fusion-gf-mh gpt2-fusion-baseline}  # recipe names (recipes/NAME.toml); "" for none
SINGLE=${SINGLE-rwkv6 mamba2}
BPE=${BPE-fusion-gf-mh gpt2-fusion-baseline rwkv6 mamba2}
source "$(dirname "$0")/device_env.sh"
mkdir -p "$OUT"
first_seed=${SEEDS%% *}
train_jobs() {  # out dir, then --job arguments; SET: space-separated overrides for every job
  local out=$1 sets=(); shift
  for s in ${SET:-}; do sets+=(--set "$s"); done
  python3 benchmarks/train_jobs.py --out "$out" --parallel "${PARALLEL:-1}" --limit "${LIMIT:-550}" "${sets[@]}" "$@"
}
for stage in $STAGES; do
  case $stage in
    check) python3 benchmarks/check_fast_paths.py --out "$OUT" ;;
    bench) # Eager. n_positions 4160: the baseline's decode cost is measured out to 4096 tokens of
           # context too. SCAN=kernels times fla's RWKV-6 and our fused SSD instead of the default
           # chunked paths (fla's first call in a process autotuned for minutes on the H100 image,
           # 2026-11-23: give it time).
           python3 -m phaselm bench recipes/fusion-gf-mh.toml recipes/rwkv6.toml recipes/mamba2.toml \
             --baseline recipes/gpt2-fusion-baseline.toml --set gpt.n_positions=4160 \
             --set fusion.scan="${SCAN:-auto}" --out "$OUT/bench" ;;
    bench-compiled) # The same under torch.compile at batch 16.
           python3 -m phaselm bench recipes/fusion-gf-mh.toml recipes/rwkv6.toml recipes/mamba2.toml \
             --baseline recipes/gpt2-fusion-baseline.toml --batches 16 --compile-batches 16 --contexts 64 \
             --set gpt.n_positions=4160 --set fusion.scan="${SCAN:-auto}" --out "$OUT/bench-compiled" ;;
    train) jobs=()
           for seed in $SEEDS; do
             for recipe in $SEEDED; do jobs+=(--job "$recipe-s$seed" "recipes/$recipe.toml" "train.seed=$seed"); done
           done
           for recipe in $SINGLE; do jobs+=(--job "$recipe-s$first_seed" "recipes/$recipe.toml" "train.seed=$first_seed"); done
           train_jobs "$OUT/char" "${jobs[@]}" ;;
    train-bpe) jobs=()
           for recipe in $BPE; do
             jobs+=(--job "$recipe-bpe" "recipes/$recipe-bpe.toml" "train.seed=$first_seed")
           done
           train_jobs "$OUT/bpe" "${jobs[@]}" ;;
    *) echo "unknown stage $stage (check, bench, bench-compiled, train, train-bpe)"; exit 2 ;;
  esac
done
