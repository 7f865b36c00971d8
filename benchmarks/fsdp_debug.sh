#!/usr/bin/env bash
# Why does train.distributed = "fsdp" not learn on GPUs (issue 16, point 3)? One call on a 2-GPU
# machine runs benchmarks/fsdp_debug.py's matrix — a small K-SSM through phaselm's own train(),
# dist {ddp, fsdp} × compile {eager, compile} × autocast {fp32, bf16}, same seed and global batch —
# recording per step the loss, grad norm, missing/zero/non-finite grads, update norms of named
# parameters and whether the ranks hold the same weights; then a tiny grafted Phase Core FSDP
# run (it hung at exit on 2 × H200) with stack dumps; then one process as the reference; and
# prints the table (how to read it: fsdp_debug.py's docstring). Results: $OUT/summary.json,
# $OUT/configs/*.json, logs in $OUT/logs, everything in $OUT/results.tgz.
#   OUT=$OUT bash benchmarks/fsdp_debug.sh                           (on nvidia-h100-x2 / nvidia-h200-x2)
#   SMALL=1 NOCOMPILE=1 OUT=/tmp/fsdp-smoke bash benchmarks/fsdp_debug.sh   (a CPU smoke run: gloo, tiny shapes)
# Every launch runs under `timeout $TIMEOUT` (a hang costs one configuration, and its stacks are
# printed 15 s before the kill); a launch that would end past $BUDGET seconds is skipped.
# On a CPU train() ignores compile and bf16, so NOCOMPILE=1 there drops the duplicate runs.
set -uo pipefail
OUT=${OUT:-runs/fsdp-debug}
NPROC=${NPROC:-2}
STEPS=${STEPS:-30}
TIMEOUT=${TIMEOUT:-120}
BUDGET=${BUDGET:-560}
PYTHON=${PYTHON:-python3}
TORCHRUN=${TORCHRUN:-torchrun}
source "$(dirname "$0")/device_env.sh"
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
mkdir -p "$OUT/logs" "$OUT/extra"
rm -f "$OUT"/extra/cli-* "$OUT"/configs/*.json
common=(--out "$OUT" --steps "$STEPS" --stack-dump-after $((TIMEOUT > 30 ? TIMEOUT - 15 : TIMEOUT)))
[ -n "${SMALL:-}" ] && common+=(--small --batch 4 --seq-len 16)
start=$SECONDS

# launch NAME NPROC ARGS...: one launch under the timeout, its log kept; the exit status returned.
launch() {
  local name=$1 nproc=$2
  shift 2
  if (( SECONDS - start + TIMEOUT > BUDGET )); then
    echo "=== $name: skipped ($((SECONDS - start)) s used of the $BUDGET s budget)"
    return 125
  fi
  echo "=== $name ($nproc process(es), ${TIMEOUT} s limit)"
  local runner=("$TORCHRUN" --standalone --nproc_per_node "$nproc")
  [ "$nproc" = 1 ] && runner=("$PYTHON")
  timeout -k 15 "$TIMEOUT" "${runner[@]}" benchmarks/fsdp_debug.py "$@" > "$OUT/logs/$name.log" 2>&1
  local code=$?
  [ $code = 0 ] || { echo "exit $code; the log's tail:"; tail -n 25 "$OUT/logs/$name.log"; }
  return $code
}

# The failing setting first (compile + bf16, as the recipes run on GPUs), then the plainest, then the rest.
configs=(ddp-compile-bf16 fsdp-compile-bf16 ddp-eager-fp32 fsdp-eager-fp32 ddp-eager-bf16 fsdp-eager-bf16
         ddp-compile-fp32 fsdp-compile-fp32)
for name in "${configs[@]}"; do
  [ -n "${NOCOMPILE:-}" ] && [[ $name == *-compile-* ]] && continue
  launch "$name" "$NPROC" "${common[@]}" --config "$name"
done

# A grafted Phase Core with FSDP: does the hang at exit come back, and where? The CLI's own
# command, as the hung run was started, with stack dumps and a marker per rank once phaselm returns.
core=(--set train.steps="$STEPS" --set train.batch_size=2 --set train.seq_len=32 --set train.eval_every=0
      --set train.checkpoint_every=0 --set train.eval_batches=2 --set train.log_every=1
      --set sample.max_new_tokens=8 --set "train.distributed='fsdp'")
rm -rf "$OUT/runs/phase-core"
if [ -n "${SMALL:-}" ]; then  # a tiny random Mamba saved as a backbone folder (a CPU cannot afford mamba-130m)
  "$PYTHON" - "$OUT/tiny-mamba" <<'EOF'
import shutil, sys
from phaselm.backbones import MambaSpec, build_mamba, save_backbone
from phaselm.corpora import load_text
from phaselm.tokenizers import learn_tokenizer
shutil.rmtree(sys.argv[1], ignore_errors=True)
tokenizer = learn_tokenizer("char", load_text("tinyshakespeare"), 0.1)
save_backbone(build_mamba(MambaSpec(hidden_size=32, n_layers=2), tokenizer.vocab_size), tokenizer, sys.argv[1])
EOF
  core+=(--set "backbone.name='$OUT/tiny-mamba'")
else
  core+=(--set backbone.shape=mamba-130m)
fi
launch phase-core "$NPROC" "${common[@]}" --cli train recipes/phase-mamba.toml --out "$OUT/runs/phase-core" "${core[@]}"
echo $? > "$OUT/extra/cli-exit.txt"

# One process at the whole batch: does the small K-SSM learn at all in these steps?
single=single-compile-bf16
[ -n "${NOCOMPILE:-}" ] && single=single-eager-fp32
launch "$single" 1 "${common[@]}" --config "$single"

echo "=== summary ($((SECONDS - start)) s)"
"$PYTHON" benchmarks/fsdp_debug.py --out "$OUT" --summarize
tar czf "$OUT/results.tgz" -C "$OUT" --exclude results.tgz --exclude runs --exclude tiny-mamba . 2>/dev/null
