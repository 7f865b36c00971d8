#!/usr/bin/env bash
# Several GPUs of one host (issue "Reliability…", point 3): does an N-process run match a
# 1-process run at the same global batch, and how do tokens/s scale?
#
# For each recipe in RECIPES: train it on 1 process with batch B, then on N processes (torchrun,
# DDP through Accelerate) with batch B/N each, same steps and seed; print both loss curves and
# the median tokens/s of each, and keep the metrics. Then (WEAK=1, the default) N processes with
# batch B each: the same work per GPU as the 1-process run, so its tokens/s ratio is the scaling
# when every GPU is as busy as the single one (the strong run's halved batch may leave a small
# model latency-bound). The Phase Core runs graft onto a random
# mamba-130m-shaped backbone (no hub on the device).
#   OUT=$OUT NPROC=2 bash benchmarks/multi_gpu.sh         (on nvidia-h100-x2 / nvidia-h200-x2)
#   NPROC=2 STEPS=20 BATCH=4 SMALL=1 RECIPES=kssm-v3 bash benchmarks/multi_gpu.sh   (a CPU smoke run: gloo, tiny shapes)
# DIST=fsdp (default ddp) runs every N-process run with --set train.distributed=fsdp: parameters,
# gradients and optimizer state sharded over the processes (FSDP2) instead of replicated.
# Keep NCCL_NVLS_ENABLE=0 (the image sets it): NVLink multicast stays off on shared hosts.
set -uo pipefail
OUT=${OUT:-runs/multi-gpu}
NPROC=${NPROC:-2}
STEPS=${STEPS:-300}
BATCH=${BATCH:-64}
DIST=${DIST:-ddp}
RECIPES=${RECIPES:-kssm-v3 phase-mamba}
source "$(dirname "$0")/device_env.sh"
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
mkdir -p "$OUT"
for name in $RECIPES; do
  small=()
  [ -n "${SMALL:-}" ] && small=(--set train.seq_len=16 --set train.eval_batches=1)
  case $name in
    kssm-v3) cmd=(train-lm recipes/kssm-v3.toml)
             [ -n "${SMALL:-}" ] && small+=(--set kssm.hidden_size=32 --set kssm.n_layers=1 --set kssm.head_dim=16 --set kssm.n_oscillators=8 --set kssm.n_harmonics=4) ;;
    phase-mamba) cmd=(train recipes/phase-mamba.toml --set backbone.shape=mamba-130m --set sample.max_new_tokens=8) ;;
    *) cmd=(train-lm "recipes/$name.toml") ;;
  esac
  common=(--set "train.steps=$STEPS" --set "train.distributed='$DIST'" --set train.log_every=10 --set train.eval_every=0 --set train.checkpoint_every=0 "${small[@]}")
  echo "=== $name: 1 process, batch $BATCH"
  python3 -m phaselm.cli "${cmd[@]}" --out "$OUT/$name-1" --set "train.batch_size=$BATCH" "${common[@]}" > "$OUT/$name-1.log" 2>&1 || tail -3 "$OUT/$name-1.log"
  echo "=== $name: $NPROC processes, batch $((BATCH / NPROC)) each"
  torchrun --standalone --nproc_per_node "$NPROC" -m phaselm.cli "${cmd[@]}" --out "$OUT/$name-$NPROC" \
    --set "train.batch_size=$((BATCH / NPROC))" "${common[@]}" > "$OUT/$name-$NPROC.log" 2>&1 || tail -3 "$OUT/$name-$NPROC.log"
  runs=("$OUT/$name-1/metrics.jsonl" "$OUT/$name-$NPROC/metrics.jsonl")
  if [ "${WEAK:-1}" = 1 ]; then
    echo "=== $name: $NPROC processes, batch $BATCH each (weak scaling)"
    torchrun --standalone --nproc_per_node "$NPROC" -m phaselm.cli "${cmd[@]}" --out "$OUT/$name-$NPROC-weak" \
      --set "train.batch_size=$BATCH" "${common[@]}" > "$OUT/$name-$NPROC-weak.log" 2>&1 || tail -3 "$OUT/$name-$NPROC-weak.log"
    runs+=("$OUT/$name-$NPROC-weak/metrics.jsonl")
  fi
  python3 - "${runs[@]}" <<'EOF'
import json, os, statistics, sys
runs = [[json.loads(l) for l in open(p)] for p in sys.argv[1:] if os.path.exists(p)]
train = [[r for r in run if "tokens_per_s" in r] for run in runs]
print("step | loss, 1 process | loss, N processes")
for a, b in zip(train[0], train[1]):
    print(f"{a['step']} | {a['loss']:.4f} | {b['loss']:.4f}")
tail = [[r["loss"] for r in t[len(t) // 2:]] for t in train[:2]]
print(f"mean loss over the second half: 1 process {statistics.mean(tail[0]):.4f}, N processes {statistics.mean(tail[1]):.4f}; "
      f"mean |difference| per logged step {statistics.mean(abs(a - b) for a, b in zip(*tail)):.4f}")
speeds = [statistics.median(r["tokens_per_s"] for r in t[1:] or t) for t in train]
print(f"median tokens/s: 1 process {speeds[0]:,.0f}, N processes {speeds[1]:,.0f} = {speeds[1] / speeds[0]:.2f}x")
if len(speeds) > 2:
    print(f"median tokens/s, N processes at the 1-process batch each: {speeds[2]:,.0f} = {speeds[2] / speeds[0]:.2f}x")
EOF
done
tar czf "$OUT/results.tgz" -C "$OUT" --exclude results.tgz . 2>/dev/null
