#!/usr/bin/env bash
# Issue "Oscillators that matter", point 4: the seeds' experiments at their own budget, several
# runs at once on each GPU of one host, then the pre-declared "does R matter" protocol on every
# oscillator model (its seeds pooled). One stage per device call (each fits ~9 minutes on 4 GPUs):
#
#   STAGE=kssm   K-SSM bistable / monostable / no-bank / driven / Kuramoto-mixer and the GPT
#                baseline, char-level Tiny Shakespeare, 5,000 steps, SEEDS seeds each; then
#                protocols/kssm-does-r-matter.toml on each oscillator variant's runs
#   STAGE=bpe    the same family (bistable, monostable, no-bank, GPT) on BPE-16K over the book corpus
#                at the BPE recipes' 2,500 steps (SET="data.corpus=.data/gutenberg", books carried)
#   STAGE=phase-mamba  a Mamba pretrained here on the book corpus (recipes/pretrain-mamba-books.toml,
#                PRETRAIN_LIMIT seconds at most, default 300), then SEEDS Phase Cores grafted on it
#                (recipes/phase-mamba.toml) side by side, then does-R-matter over the cores and the
#                observation and intervention protocols on the first (CORPUS, default .data/gutenberg;
#                PM_PROTOCOLS picks among "does-r-matter observation intervention")
#   STAGE=fusion the fusion table (WS, HY, GF, HGF, CP, RF; pure RWKV-6, pure Mamba-2; GPT-2) and the
#                gate inits GF-XM / GF-XR, char-level, 5,000 steps, SEEDS seeds
#
#   OUT=$OUT GPUS=4 STAGE=kssm bash benchmarks/seed_experiments.sh      (device: nvidia-h200-x4)
#   SMOKE=1 GPUS=1 STAGE=kssm bash benchmarks/seed_experiments.sh       (CPU: toy sizes, 3 steps)
# Environment: VARIANTS (STAGE=kssm: which of driven kuramoto bistable monostable nobank gpt, in
# that order by default), SEEDS (default "0 1 2"), PARALLEL (jobs at once per GPU, default 3: queued jobs start as
# earlier ones end, so a deadline cuts the last in the queue, not every job on a GPU), DEADLINE
# (seconds after which running jobs stop, default 470: the protocols follow), SET (extra
# space-separated overrides for every job).
# Runs share GPUs, so the tokens/s they log are not speeds (docs/benchmarks.md has those).
# The driven K-SSM runs with bank_carry_phases = false: the carried bank loops over positions in
# Python (256 sequential steps per layer), too slow for this budget; every other driven option
# (projected phase input, random ω₀, 2 coupling steps, harmonics+R readout) is on.
set -uo pipefail
OUT=${OUT:-runs/seed-experiments}
STAGE=${STAGE:-kssm}
SEEDS=${SEEDS:-0 1 2}
source "$(dirname "$0")/device_env.sh"
# Many compiling processes at once: each one's Inductor worker pool would otherwise take every core.
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-2}
mkdir -p "$OUT"
args=(--out "$OUT" --gpus "${GPUS:-1}" --parallel "${PARALLEL:-3}" --limit 590 --deadline "${DEADLINE:-470}"
      --runs "${RUNS:-/tmp/seed-experiment-runs}" --set train.checkpoint_every=0)
for s in ${SET:-}; do args+=(--set "$s"); done
if [ -n "${SMOKE:-}" ]; then
  for s in train.steps=3 train.batch_size=2 train.seq_len=16 train.eval_batches=1 train.log_every=1 train.eval_every=0; do
    args+=(--set "$s")
  done
fi
tiny() {  # toy model sizes for the CPU smoke run
  [ -z "${SMOKE:-}" ] && return
  case $1 in
    kssm) echo kssm.hidden_size=32 kssm.n_layers=1 kssm.head_dim=16 kssm.n_oscillators=8 kssm.n_harmonics=4 \
               kssm.kuramoto_heads=2 kssm.kuramoto_oscillators=4 kssm.kuramoto_key_dim=8 ;;
    fusion) echo fusion.hidden_size=32 fusion.n_layers=1 fusion.rwkv_head_dim=16 fusion.mamba_head_dim=16 ;;
    gpt) echo gpt.n_embd=32 gpt.n_layer=1 gpt.n_head=2 ;;
    core) echo core.n_oscillators=8 sample.max_new_tokens=4 ;;
  esac
}
job() {  # NAME RECIPE ARCH [KEY=VALUE ...]: one job per seed
  local name=$1 recipe=$2 arch=$3; shift 3
  for seed in $SEEDS; do
    # shellcheck disable=SC2046
    args+=(--job "$name-s$seed" "recipes/$recipe.toml" "train.seed=$seed" "$@" $(tiny "$arch"))
  done
}
names() { for seed in $SEEDS; do printf '%s ' "$1-s$seed"; done; }

case $STAGE in
  kssm)
    # The oscillator variants first (the protocols need their models); the controls queue behind.
    for variant in ${VARIANTS:-driven kuramoto bistable monostable nobank gpt}; do
      case $variant in
        driven) job driven kssm-v3-driven kssm kssm.bank_carry_phases=false ;;
        kuramoto) job kuramoto kssm-kuramoto kssm ;;
        bistable) job bistable kssm-v3 kssm ;;
        monostable) job monostable kssm-v3-monostable kssm ;;
        nobank) job nobank kssm-v3-nobank kssm ;;
        gpt) job gpt gpt-baseline gpt ;;
        *) echo "unknown variant $variant" >&2; exit 2 ;;
      esac
      case $variant in
        # shellcheck disable=SC2046
        driven|bistable|monostable)
          args+=(--protocol "does-r-matter-$variant" protocols/kssm-does-r-matter.toml $(names "$variant")) ;;
        # The token-coupled design: its synchrony lives in the mixer, so the test is on the mixer sites.
        # shellcheck disable=SC2046
        kuramoto)
          args+=(--protocol "does-r-matter-$variant" protocols/kssm-kuramoto-does-r-matter.toml $(names "$variant")) ;;
      esac
    done ;;
  bpe)
    # The K-SSM family on BPE-16K over the book corpus (each recipe's own 2,500 steps of 32 × 256
    # tokens); the corpus must be given: SET="data.corpus=.data/gutenberg" with the books carried.
    for variant in ${VARIANTS:-bistable monostable nobank gpt}; do
      case $variant in
        bistable) job bpe-bistable kssm-v3-bpe kssm ;;
        monostable) job bpe-monostable kssm-v3-bpe kssm kssm.bistable=false ;;
        nobank) job bpe-nobank kssm-v3-bpe kssm kssm.bank=false ;;
        gpt) job bpe-gpt gpt-baseline-bpe gpt ;;
        *) echo "unknown variant $variant" >&2; exit 2 ;;
      esac
    done ;;
  phase-mamba)
    corpus=${CORPUS:-.data/gutenberg}
    backbone=${RUNS:-/tmp/seed-experiment-runs}/backbone
    pre=(--set "data.corpus=$corpus")
    [ -n "${SMOKE:-}" ] && for s in model.hidden_size=16 model.n_layers=1 tokenizer.vocab_size=300 train.steps=3 \
        train.batch_size=2 train.seq_len=16 train.eval_batches=1 train.log_every=1; do pre+=(--set "$s"); done
    rm -rf "$backbone"
    echo "pretraining the backbone: phaselm pretrain recipes/pretrain-mamba-books.toml --out $backbone ${pre[*]}"
    started=$(date +%s)
    timeout "${PRETRAIN_LIMIT:-300}" python3 -m phaselm pretrain recipes/pretrain-mamba-books.toml --out "$backbone" \
      "${pre[@]}" > "$OUT/backbone.log" 2>&1
    echo "pretrain exit $? after $(( $(date +%s) - started )) s"
    cp "$backbone/metrics.jsonl" "$OUT/backbone.metrics.jsonl" 2>/dev/null
    cp "$backbone/summary.json" "$OUT/backbone.summary.json" 2>/dev/null && cat "$OUT/backbone.summary.json"
    [ -d "$backbone/model" ] || { echo "no backbone model: see $OUT/backbone.log"; tail -20 "$OUT/backbone.log"; exit 1; }
    args+=(--command train)
    job pm phase-mamba core "backbone.name=$backbone/model" "data.corpus=$corpus"
    first=$(names pm | cut -d' ' -f1)
    for protocol in ${PM_PROTOCOLS:-does-r-matter observation intervention}; do
      case $protocol in
        # shellcheck disable=SC2046
        does-r-matter) args+=(--protocol does-r-matter-phase-mamba protocols/phase-mamba-does-r-matter.toml $(names pm)) ;;
        *) args+=(--protocol "$protocol-phase-mamba" "protocols/phase-mamba-$protocol.toml" "$first") ;;
      esac
    done ;;
  fusion)
    for kind in GF HGF CP RF WS HY; do job "fusion-$kind" fusion-gf-mh fusion "fusion.fusion='$kind'"; done
    job gf-xm fusion-gf-mh fusion fusion.gate_init=0.03
    job gf-xr fusion-gf-mh fusion fusion.gate_init=0.97
    job rwkv6 rwkv6 fusion
    job mamba2 mamba2 fusion
    job gpt2 gpt2-fusion-baseline gpt ;;
  *) echo "STAGE must be kssm, bpe, phase-mamba or fusion, got $STAGE" >&2; exit 2 ;;
esac
python3 benchmarks/train_jobs.py "${args[@]}"
