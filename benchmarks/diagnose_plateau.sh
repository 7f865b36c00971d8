#!/usr/bin/env bash
# A/B check of the K-SSM early-training plateau: the fused harmonics kernel's GPU tests, then
# 400-step no-mixer runs with and without torch.compile, with the reference harmonics, and
# without the bank regulariser. Prints the validation losses of each.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
python3 -m pytest -q -p no:cacheprovider tests/ops/test_harmonics.py 2>&1 | tail -3
RUNS=$(mktemp -d)
common="--set train.steps=400 --set train.eval_every=100 --set train.eval_batches=10 --set train.checkpoint_every=0"
run() {  # name, env, extra args
  local name=$1 envs=$2; shift 2
  env $envs python3 -m phaselm train-lm recipes/${RECIPE:-kssm-v3-nomixer}.toml --out "$RUNS/$name" $common "$@" > /dev/null 2> "$RUNS/$name.log"
  echo "$name: $(grep '"val"' "$RUNS/$name/metrics.jsonl" | python3 -c 'import sys,json; print([round(json.loads(l)["val_ce"],3) for l in sys.stdin])')"
}
run compile-fused "PHASELM_BACKEND_HARMONICS=fused"
run eager-fused "PHASELM_BACKEND_HARMONICS=fused" --set train.compile=false
run compile-reference "PHASELM_BACKEND_HARMONICS=reference"
run eager-reference "PHASELM_BACKEND_HARMONICS=reference" --set train.compile=false
run compile-fused-noreg "PHASELM_BACKEND_HARMONICS=fused" --set kssm.reg_weight=0.0
