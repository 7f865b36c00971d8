#!/usr/bin/env bash
# Train language-model recipes one after another on one GPU and collect what docs/results.md
# quotes: parameters, final and best validation loss, median training tokens/s.
#
# Usage (repo root; on the device tool .whl holds the wheels the image lacks, see device_env.sh):
#   RECIPES="kssm-v3 gpt-baseline" bash benchmarks/kssm_vs_gpt.sh
# Environment:
#   RECIPES  recipe names under recipes/ (default: kssm-v3 gpt-baseline)
#   STEPS    override train.steps (default: the recipe's own)
#   SET      extra space-separated --set overrides, e.g. "data.corpus=.data/gutenberg"
#   LIMIT    seconds allowed per run (default 280)
#   KEEP     recipes whose trained model folder comes back as $OUT/NAME.model.tgz.part-*
#   PARALLEL runs at once (default 1; more shares the GPU, so their tokens/s are not speeds)
# Writes $OUT/results.tgz (per recipe: summary.json, metrics.jsonl, log; machine.txt, table.txt);
# benchmarks/train_jobs.py does the work.
set -uo pipefail
OUT=${OUT:-runs/bench}
source "$(dirname "$0")/device_env.sh"
args=(--out "$OUT" --limit "${LIMIT:-280}" --parallel "${PARALLEL:-1}")
[ -n "${STEPS:-}" ] && args+=(--set "train.steps=$STEPS")
for s in ${SET:-}; do args+=(--set "$s"); done
for k in ${KEEP:-}; do args+=(--keep "$k"); done
for recipe in ${RECIPES:-kssm-v3 gpt-baseline}; do args+=(--job "$recipe" "recipes/$recipe.toml"); done
python3 benchmarks/train_jobs.py "${args[@]}"
