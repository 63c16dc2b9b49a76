# The toy pipeline's stages, shared by run_demo.sh, run_ablation.sh and run_both_ways.sh (sourced, not run,
# from the repository root). Each stage calls the examples/covost2 recipe of the same stage, scaled by
# environment variables. The caller sets CORPUS and EXP; sourcing this file sets what every toy script
# shares: PY [.venv/bin/python] and its bin folder first on PATH (the covost2 recipes call fairseq-train
# and torchrun), SEED [1], PROCS [DEMO_PROCS, 2] training processes of one thread each.
PY="${PY:-.venv/bin/python}"
BIN="$(cd "$(dirname "$PY")" && pwd)"
export PATH="$BIN:$PATH"
SEED="${SEED:-1}"
PROCS="${DEMO_PROCS:-2}"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

# need_espeak_ng: exit with a one-line hint when espeak-ng, which synthesizes the corpus, is missing
need_espeak_ng() {
  if ! command -v espeak-ng >/dev/null; then
    echo "The toy corpus is synthesized with espeak-ng, which is missing: \`make install\` installs it" \
         "with apt-get; elsewhere install the espeak-ng package yourself." >&2
    exit 1
  fi
}

# toy_corpus [more make_toy_corpus.py flags]: the corpus (reused when it exists) and its three test sets
toy_corpus() {
  "$PY" examples/toy/make_toy_corpus.py --out "$CORPUS" --train-numbers "${DEMO_TRAIN_NUMBERS:-300}" \
    --train-variants-per-number "${DEMO_TRAIN_VOICES:-3}" --test-variants "${DEMO_TEST_VARIANTS:-2}" "$@" 2>&1 \
    | grep -E "utterances|ready" || true
}

# mt_stage SAVE_DIR [TRAIN_SUBSET]: examples/covost2/finetune_mbart50.sh with a tiny random-init mBART
# (mbart50_text_tiny) on every training number's transcript -> translation pair (manifests [train_mt])
mt_stage() {
  local save="$1" subset="${2:-train_mt}" epochs="${DEMO_MT_EPOCHS:-15}"
  echo "== MT stage: a tiny mBART (mbart50_text_tiny) on the transcript -> translation pairs ($subset), $epochs epochs"
  DATA="$CORPUS" SAVE_DIR="$save" TRAIN_SUBSET="$subset" MT_ARCH=mbart50_text_tiny MT_BATCH_SIZE=64 \
    MT_UPDATE_FREQ=1 MT_MAX_EPOCH="$epochs" MT_LR="${DEMO_MT_LR:-2e-3}" MT_WARMUP=50 MT_DROPOUT=0.1 \
    MT_ATTENTION_DROPOUT=0 \
    bash examples/covost2/finetune_mbart50.sh --cpu --seed "$SEED" --disable-validation --no-epoch-checkpoints \
      --num-workers 0 --log-format json --log-interval 20 2>&1 \
    | "$PY" examples/toy/train_progress.py --total 0 --log "$save/train.log"
}

# demo_comsl_settings: the demo's ComSL stage, shared by run_demo.sh and run_trim_vocab.sh: ROW (row 7, the
# full objective), EPOCHS [DEMO_EPOCHS, 6] with Whisper frozen throughout (FREEZE_EPOCHS), BATCH [DEMO_BATCH,
# 16] clips per process, LR [DEMO_LR, 2e-3], WARMUP [DEMO_WARMUP, 50]
demo_comsl_settings() {
  ROW=examples/covost2/ablations/row7_cml.sh
  EPOCHS="${DEMO_EPOCHS:-6}"
  FREEZE_EPOCHS="$EPOCHS"
  BATCH="${DEMO_BATCH:-16}"
  LR="${DEMO_LR:-2e-3}"
  WARMUP="${DEMO_WARMUP:-50}"
}

# row_command ROW_SCRIPT SAVE_DIR [more fairseq-train flags]: one examples/covost2/ablations row on
# Whisper base + adapter + the MT-stage model ($MT, also the MT teacher). Environment:
# EPOCHS, BATCH (clips per process), LR, WARMUP, FREEZE_EPOCHS (rows 5-7), TRAIN_SUBSET.
row_command() {
  local script="$1" save="$2"
  shift 2
  ARCH=whisper_mbart_composite_tiny WHISPER="$WHISPER" MBART="$MT" MT_TEACHER="$MT" DATA="$CORPUS" \
    SAVE_DIR="$save" NPROC_PER_NODE="$PROCS" BATCH_SIZE="$BATCH" GLOBAL_BATCH="$((BATCH * PROCS))" \
    MAX_EPOCH="$EPOCHS" FREEZE_EPOCHS="$FREEZE_EPOCHS" LR="$LR" WARMUP="$WARMUP" KEEP_LAST_EPOCHS=1 \
    TRAIN_SUBSET="${TRAIN_SUBSET:-train}" \
    bash "$script" --cpu --seed "$SEED" --disable-validation --no-epoch-checkpoints --num-workers 0 \
      --log-format json --log-interval 20 "$@"
}

# comsl_row ROW_SCRIPT SAVE_DIR [flags]: the row trained, its progress shown, its log in SAVE_DIR/train.log
comsl_row() {
  row_command "$@" 2>&1 | "$PY" examples/toy/train_progress.py --total 0 --log "$2/train.log"
}

# cache_ahead_start ROW_SCRIPT SAVE_DIR [flags incl. --whisper-feature-cache DIR]: in the background, on
# one core, the row's Whisper feature cache filled ahead with the row's exact flags (CACHE_FEATURES=1:
# comsl-cache-features; the MT-stage checkpoint need not exist yet), logged to SAVE_DIR/cache_ahead.log.
# cache_ahead_wait waits for it to finish; cache_ahead_stop ends it (on exit: complete entries are kept).
cache_ahead_start() {
  mkdir -p "$2"
  set -m  # its own process group, so that the stop reaches the python process under the recipe's shells
  CACHE_FEATURES=1 row_command "$@" > "$2/cache_ahead.log" 2>&1 &
  CACHE_AHEAD_PID=$!
  set +m
  trap cache_ahead_stop EXIT
}
cache_ahead_wait() {
  if [ -n "${CACHE_AHEAD_PID:-}" ]; then
    wait "$CACHE_AHEAD_PID" || { echo "filling the Whisper feature cache failed: see $1" >&2; return 1; }
    CACHE_AHEAD_PID=
  fi
}
cache_ahead_stop() {
  if [ -n "${CACHE_AHEAD_PID:-}" ]; then
    kill -TERM -- "-$CACHE_AHEAD_PID" 2>/dev/null || true
    wait "$CACHE_AHEAD_PID" 2>/dev/null || true
    while kill -0 -- "-$CACHE_AHEAD_PID" 2>/dev/null; do sleep 0.2; done  # the python process, too
    CACHE_AHEAD_PID=
  fi
}

# decode_one SAVE_DIR SET: beam 5 on one set, one thread: SAVE_DIR/generate-SET.{txt,log}
decode_one() {
  fairseq-generate "$CORPUS" --user-dir comsl_fairseq --task comsl_speech_to_text --gen-subset "$2" \
    --config-yaml "${CONFIG_YAML:-config.yaml}" \
    --path "$1/checkpoint_last.pt" --beam 5 --prefix-size 1 --batch-size 32 --required-batch-size-multiple 1 \
    --scoring sacrebleu --cpu > "$1/generate-$2.txt" 2> "$1/generate-$2.log"
}

# decode_sets SAVE_DIR SET...: decode_one for each set, PROCS at a time
decode_sets() {
  local save="$1" pids=() s p
  shift
  for s in "$@"; do
    if [ "${#pids[@]}" -ge "$PROCS" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
    decode_one "$save" "$s" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
}
