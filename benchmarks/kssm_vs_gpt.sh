#!/usr/bin/env bash
# K-SSM v3 vs the same-size GPT baseline, char-level Tiny Shakespeare, one GPU, one run each.
# Usage on the device tool (from the repo root; .whl holds the tomli_w wheel):
#   STEPS=1000 bash benchmarks/kssm_vs_gpt.sh   # results under $OUT
set -uo pipefail
OUT=${OUT:-runs/bench}
STEPS=${STEPS:-5000}
LIMIT=${LIMIT:-270}   # seconds per run, so the pair fits one 10-minute device call
if [ -d .whl ]; then
  python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
RUNS=$(mktemp -d)   # a fresh run root: a warm machine keeps earlier runs
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
for recipe in ${RECIPES:-gpt-baseline kssm-v3}; do
  timeout "$LIMIT" python3 -m phaselm train-lm "recipes/$recipe.toml" --out "$RUNS/$recipe" \
    --set train.steps="$STEPS" --set train.eval_every=500 --set train.eval_batches=20 --set train.checkpoint_every=0 \
    --json > "$OUT/$recipe.summary.json" 2> "$OUT/$recipe.log"
  echo "$recipe exit $?"
  cp "$RUNS/$recipe/metrics.jsonl" "$OUT/$recipe.metrics.jsonl" 2>/dev/null
  tail -c 400 "$OUT/$recipe.log"
done
# The table of docs/results.md: parameters, final val loss, median training tokens/s (first two
# logged intervals skipped as warm-up).
python3 - "$OUT" ${RECIPES:-gpt-baseline kssm-v3} <<'PY' | tee "$OUT/table.txt"
import json, sys
out = sys.argv[1]
for name in sys.argv[2:]:
    try:
        summary = json.load(open(f"{out}/{name}.summary.json"))
        records = [json.loads(line) for line in open(f"{out}/{name}.metrics.jsonl")]
    except (OSError, ValueError):
        print(f"{name}: no result"); continue
    speeds = sorted([r["tokens_per_s"] for r in records if "tokens_per_s" in r][2:]) or [float("nan")]
    print(f"{name}: parameters {summary['parameters']:,}  val loss {summary['val_ce']:.3f}  median tokens/s {speeds[len(speeds)//2]:,.0f}")
PY
