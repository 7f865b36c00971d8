#!/usr/bin/env bash
# Issue "Phase-Mamba at real scale" on one GPU: our Mamba kernels checked and timed, the Phase Core
# on a 2.8B-shaped Hugging Face Mamba benched, the seed recipe run, and the decode gap profiled.
#
# Stages (STAGES, in order; default all):
#   env      versions and the card
#   check    benchmarks/check_fast_paths.py --only mamba: selective scan, causal conv1d, decode steps,
#            Kuramoto kernels and a routed HF Mamba vs their references → $OUT/fast_paths.json
#   tune     benchmarks/tune_selective_scan.py: scan tiles at a 2.8B layer (4 × 512 × 5120) → $OUT/tune_selective_scan.json
#   bench    phaselm bench --backbone mamba-2.8b (core at layer 32, 4 × 512; transformers' own path timed
#            once at 1 × REFERENCE_SEQ) → $OUT/bench-2.8b/
#   bench-130m  the same on mamba-130m → $OUT/bench-130m/
#   seed     the seed recipe on random 2.8B weights: phaselm train recipes/phase-mamba-2.8b.toml
#            --set backbone.shape=mamba-2.8b → $OUT/seed.log, $OUT/seed-metrics.jsonl, $OUT/seed-summary.json
#   decode   benchmarks/decode_profile.py: the GPT-2 baseline's decode in the bench loop vs generate → $OUT/decode_profile.*
#   decode-bench  phaselm bench's decode (GPT-2 baseline, Mamba-2) and decode_profile.py in one run → $OUT/bench-decode/
# SET adds space-separated overrides to the seed run (e.g. "train.steps=100"). Example:
#   STAGES="check tune" OUT=$OUT bash benchmarks/phase_mamba_gpu.sh
# Everything lands in $OUT/raw and is packed into $OUT/results.tgz at the end (the device tool
# brings back at most 8 files); the bench tables are also copied beside it.
set -uo pipefail
FINAL=${OUT:-runs/phase-mamba-gpu}
OUT=$FINAL/raw
STAGES=${STAGES:-env check tune bench bench-130m seed decode}
REFERENCE_SEQ=${REFERENCE_SEQ:-2048}
source "$(dirname "$0")/device_env.sh"
mkdir -p "$OUT"
for stage in $STAGES; do
  echo "=== $stage $(date -u +%H:%M:%S)"
  case $stage in
    env) nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
         python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"
         git describe --always --dirty 2>/dev/null || true ;;
    check) python3 benchmarks/check_fast_paths.py --only mamba --out "$OUT" ;;
    tune) python3 benchmarks/tune_selective_scan.py --out "$OUT" ;;
    bench) python3 -m phaselm bench --backbone mamba-2.8b --layer 32 --batches 4 --seq-len 512 \
             --reference-seq "$REFERENCE_SEQ" --out "$OUT/bench-2.8b" ;;
    bench-130m) python3 -m phaselm bench --backbone mamba-130m --batches 4 --seq-len 512 --out "$OUT/bench-130m" ;;
    seed) sets=(); for s in ${SET:-}; do sets+=(--set "$s"); done
          start=$(date +%s)
          python3 -m phaselm train recipes/phase-mamba-2.8b.toml --set backbone.shape=mamba-2.8b "${sets[@]}" \
            --out "$OUT/seed-run" > "$OUT/seed.log" 2>&1
          echo "exit $? after $(( $(date +%s) - start )) s" | tee -a "$OUT/seed.log"
          tail -5 "$OUT/seed.log"
          cp "$OUT/seed-run/metrics.jsonl" "$OUT/seed-metrics.jsonl" 2>/dev/null
          cp "$OUT/seed-run/summary.json" "$OUT/seed-summary.json" 2>/dev/null
          rm -rf "$OUT/seed-run" ;;
    decode) python3 benchmarks/decode_profile.py --out "$OUT" ;;
    decode-bench) # the bench's decode after the fix, beside plain generate in the same run
           python3 -m phaselm bench recipes/mamba2.toml --baseline recipes/gpt2-fusion-baseline.toml --batches 1 --steps 3 \
             --contexts 64,1024 --set gpt.n_positions=4160 --out "$OUT/bench-decode"
           python3 benchmarks/decode_profile.py --out "$OUT" ;;
    *) echo "unknown stage $stage" ;;
  esac
done
tar czf "$FINAL/results.tgz" -C "$OUT" . && for f in bench-2.8b bench-130m bench-decode; do
  [ -f "$OUT/$f/bench.md" ] && cp "$OUT/$f/bench.md" "$FINAL/$f.md"; done
rm -rf "$OUT"
ls -la "$FINAL"
