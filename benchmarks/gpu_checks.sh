#!/usr/bin/env bash
# Short GPU confirmations that fit one device call on a 2-GPU host (nvidia-h200-x2), each with a
# hard time limit so one hang cannot eat the call:
#   profile   GPU 0: one compiled K-SSM v3 step and one GPT step, kernel launches and kernel time
#             (benchmarks/kssm_profile.py), foreach vs fused AdamW; the Mamba-2 mixer's short
#             convolution now goes through the causal_conv1d op (Triton on CUDA)
#   train     GPU 1: the Kuramoto-mixer K-SSM for KURAMOTO_STEPS (does it learn now; TRAIN_SET
#             overrides it), then the training loop itself (phaselm train-lm) for STEPS steps of
#             K-SSM v3 under each train.compile_mode in MODES (default: reduce-overhead, CUDA graphs)
#   fsdp      both GPUs: benchmarks/fsdp_debug.py's DDP / FSDP configurations and its output-hook
#             check (does this torch's FSDP2 finish the objective's backward)
# All three run at once (the call is short): profile's kernel totals hold under the sharing, its
# step times do not; the others are correctness checks.
#   OUT=$OUT bash benchmarks/gpu_checks.sh        (STAGES="profile train fsdp" by default)
#   STAGES=train STEPS=2 KURAMOTO_STEPS=2 SET="kssm.hidden_size=32 kssm.n_layers=1 ..." bash benchmarks/gpu_checks.sh
#                                                 (a CPU check of the script: toy sizes)
set -uo pipefail
OUT=${OUT:-runs/gpu-checks}
STAGES=${STAGES:-profile train fsdp}
STEPS=${STEPS:-300}
source "$(dirname "$0")/device_env.sh"
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader > "$OUT/machine.txt" 2>/dev/null
date -u >> "$OUT/machine.txt"
has() { [[ " $STAGES " == *" $1 "* ]]; }

if has profile; then
  (CUDA_VISIBLE_DEVICES=0 OUT=$OUT timeout "${PROFILE_LIMIT:-150}" python3 benchmarks/kssm_profile.py \
     --pairs chunked:reference --settings default:foreach,default:fused --no-breakdown --kernels 25 \
     > "$OUT/profile.log" 2>&1; echo "profile exit $?" >> "$OUT/profile.log") &
fi
if has train; then
  (
    export CUDA_VISIBLE_DEVICES=1
    common=(--json --set train.eval_every=0 --set train.eval_batches=4 --set train.checkpoint_every=0
            --set train.log_every=25)
    for s in ${SET:-}; do common+=(--set "$s"); done  # e.g. toy sizes for a CPU check of this script
    kuramoto=(); for s in ${TRAIN_SET:-}; do kuramoto+=(--set "$s"); done
    timeout "${KURAMOTO_LIMIT:-130}" python3 -m phaselm train-lm recipes/kssm-kuramoto.toml --out /tmp/gpu-checks/kuramoto \
      "${common[@]}" --set "train.steps=${KURAMOTO_STEPS:-1000}" --set train.eval_every=250 "${kuramoto[@]}" \
      > "$OUT/train-kuramoto.json" 2> "$OUT/train-kuramoto.log"
    echo "kuramoto exit $?" >> "$OUT/train.log"
    cp /tmp/gpu-checks/kuramoto/metrics.jsonl "$OUT/train-kuramoto.metrics.jsonl" 2>/dev/null
    for mode in ${MODES:-reduce-overhead}; do
      timeout "${TRAIN_LIMIT:-100}" python3 -m phaselm train-lm recipes/kssm-v3.toml --out "/tmp/gpu-checks/kssm-$mode" \
        "${common[@]}" --set "train.steps=$STEPS" --set "train.compile_mode='$mode'" \
        > "$OUT/train-kssm-$mode.json" 2> "$OUT/train-kssm-$mode.log"
      echo "kssm $mode exit $?" >> "$OUT/train.log"
      cp "/tmp/gpu-checks/kssm-$mode/metrics.jsonl" "$OUT/train-kssm-$mode.metrics.jsonl" 2>/dev/null
    done
  ) &
fi
if has fsdp; then  # beside the others: a correctness check, not a timing
  (timeout "${FSDP_LIMIT:-150}" torchrun --standalone --nproc_per_node 2 benchmarks/fsdp_debug.py --out "$OUT/fsdp" \
     --config ddp-eager-fp32 --config fsdp-eager-fp32 --config fsdp-compile-bf16 > "$OUT/fsdp.log" 2>&1
   echo "fsdp exit $?" >> "$OUT/fsdp.log"
   python3 benchmarks/fsdp_debug.py --out "$OUT/fsdp" --summarize >> "$OUT/fsdp.log" 2>&1
   rm -rf "$OUT/fsdp/runs") &
fi
wait
cat "$OUT/train.log" 2>/dev/null
grep -A12 "Compiled training tokens/s" "$OUT/profile.log" 2>/dev/null; grep "kernel launches" "$OUT/profile.log" 2>/dev/null
grep -E "^\| |output hook" "$OUT/fsdp.log" 2>/dev/null | tail -n 6
# One file back (the device returns few files): everything in results.tgz.
tar czf /tmp/gpu-checks-results.tgz -C "$OUT" . && find "$OUT" -mindepth 1 -delete && mv /tmp/gpu-checks-results.tgz "$OUT/results.tgz"
