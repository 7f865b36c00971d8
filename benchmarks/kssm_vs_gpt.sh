#!/usr/bin/env bash
# Train language-model recipes one after another on one GPU and collect what docs/results.md
# quotes: parameters, final validation loss, median training tokens/s.
#
# Usage (repo root; on the device tool .whl holds the tomli_w wheel the image lacks):
#   RECIPES="kssm-v3 gpt-baseline" bash benchmarks/kssm_vs_gpt.sh
# Environment:
#   RECIPES  recipe names under recipes/ (default: kssm-v3 gpt-baseline)
#   STEPS    override train.steps (default: the recipe's own)
#   SET      extra space-separated --set overrides, e.g. "data.corpus=.data/gutenberg"
#   LIMIT    seconds allowed per run (default 280)
#   KEEP     recipes whose trained model folder comes back as $OUT/NAME.model.tgz.part-*
#            (split at 15 MB: the device tool returns files up to 16 MiB)
# Writes $OUT/results.tgz (per recipe: summary.json, metrics.jsonl, log; machine.txt, table.txt).
set -uo pipefail
OUT=${OUT:-runs/bench}
RECIPES=${RECIPES:-kssm-v3 gpt-baseline}
LIMIT=${LIMIT:-280}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
RUNS=$(mktemp -d)     # fresh run root: a warm machine keeps earlier runs
RESULTS=$(mktemp -d)
overrides=()
[ -n "${STEPS:-}" ] && overrides+=(--set "train.steps=$STEPS")
for s in ${SET:-}; do overrides+=(--set "$s"); done
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; date -u; git rev-parse --short HEAD 2>/dev/null; } | tee "$RESULTS/machine.txt"
# Collect after every recipe, so a call cut off at its limit still returns what finished.
collect() {
python3 - "$RESULTS" $done_recipes <<'PY' | tee "$RESULTS/table.txt"
import json, sys
out = sys.argv[1]
for name in sys.argv[2:]:
    try:
        summary = json.load(open(f"{out}/{name}.summary.json"))
        records = [json.loads(line) for line in open(f"{out}/{name}.metrics.jsonl")]
    except (OSError, ValueError):
        print(f"{name}: no result"); continue
    # Median training tokens/s, the first two logged intervals skipped (compilation, warm-up).
    speeds = sorted([r["tokens_per_s"] for r in records if "tokens_per_s" in r][2:]) or [float("nan")]
    vals = [r for r in records if r.get("split") == "val"]
    best = min(vals, key=lambda r: r["val_ce"]) if vals else {"val_ce": float("nan"), "step": 0}
    print(f"{name}: parameters {summary['parameters']:,}  val loss {summary['val_ce']:.4f}  "
          f"best val {best['val_ce']:.4f} @ {best['step']}  "
          f"val ppl {summary['val_ppl']:.2f}  median tokens/s {speeds[len(speeds)//2]:,.0f}  "
          f"train {summary['train_seconds']:.0f} s")
PY
tar czf "$OUT/results.tgz" -C "$RESULTS" .
}
done_recipes=""
for recipe in $RECIPES; do
  start=$(date +%s)
  timeout "$LIMIT" python3 -m phaselm train-lm "recipes/$recipe.toml" --out "$RUNS/$recipe" "${overrides[@]}" \
    --json > "$RESULTS/$recipe.summary.json" 2> "$RESULTS/$recipe.log"
  echo "$recipe exit $? after $(( $(date +%s) - start )) s"
  cp "$RUNS/$recipe/metrics.jsonl" "$RESULTS/$recipe.metrics.jsonl" 2>/dev/null
  tail -c 300 "$RESULTS/$recipe.log"; echo
  done_recipes="$done_recipes $recipe"
  collect
  if [[ " ${KEEP:-} " == *" $recipe "* && -d "$RUNS/$recipe/model" ]]; then
    tar czf - -C "$RUNS" --exclude checkpoints "$recipe" | split -b 15M - "$OUT/$recipe.model.tgz.part-"
  fi
done
ls -la "$OUT"
