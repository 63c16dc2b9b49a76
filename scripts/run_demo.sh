#!/usr/bin/env bash
# The demo behind `make demo`: build the toy spoken-numbers corpus, train a tiny ComSL model
# from random initialisation for a fixed time budget, decode the whole held-out test set
# with beam 5, and score it (sacreBLEU, exact match, examples).
#
# Environment: PY (python of the venv), CORPUS [data/toy], EXP [exp/demo],
#              DEMO_TRAIN_MINUTES [9], SEED [1]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PY:-.venv/bin/python}"
BIN="$(dirname "$PY")"
CORPUS="${CORPUS:-data/toy}"
EXP="${EXP:-exp/demo}"
MINUTES="${DEMO_TRAIN_MINUTES:-9}"
SEED="${SEED:-1}"
export PYTHONUNBUFFERED=1  # show training progress as it happens

if ! command -v espeak-ng >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing espeak-ng (speech synthesis for the toy corpus)"
    apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null
  else
    echo "The demo synthesizes its corpus with espeak-ng, which is missing. Install it with" >&2
    echo "  sudo apt-get install espeak-ng     (Debian/Ubuntu)   or   brew install espeak-ng (macOS)" >&2
    exit 1
  fi
fi

if [ ! -f "$CORPUS/test.tsv" ]; then
  echo "== building the toy corpus in $CORPUS (numbers 0-999 spoken in fr/de/es, ~1 minute)"
  "$PY" scripts/make_toy_corpus.py --out "$CORPUS"
fi

echo "== training whisper_mbart_composite_tiny from scratch for $MINUTES minutes (log every 100 updates)"
rm -rf "$EXP"
mkdir -p "$EXP"
hours=$("$PY" -c "print($MINUTES / 60)")
"$BIN/fairseq-train" "$CORPUS" --user-dir comsl_fairseq --task comsl_speech_to_text \
  --train-subset train --valid-subset dev --arch whisper_mbart_composite_tiny \
  --criterion comsl_multitask --st-weight 1 --asr-weight 1 --mt-weight 0.5 --ddm-alpha 0.8 \
  --cml-weight 0 --ctc-weight 1 --adapter-activation gelu --adapter-dropout 0.1 \
  --optimizer adam --adam-betas '(0.9, 0.98)' --lr 3e-3 --lr-scheduler inverse_sqrt --warmup-updates 150 \
  --clip-norm 1.0 --max-tokens 640000 --required-batch-size-multiple 1 --num-workers 1 \
  --stop-time-hours "$hours" --max-epoch 100 --save-dir "$EXP" --no-epoch-checkpoints \
  --log-interval 100 --log-format simple --seed "$SEED" --cpu 2>&1 | tee "$EXP/train.log" \
  | grep --line-buffered -E "\| (train_inner|dev) \||Stopping|done training"

echo "== decoding the held-out test set with beam 5"
"$BIN/fairseq-generate" "$CORPUS" --user-dir comsl_fairseq --task comsl_speech_to_text --gen-subset test \
  --path "$EXP/checkpoint_last.pt" --beam 5 --prefix-size 1 --batch-size 64 --required-batch-size-multiple 1 \
  --scoring sacrebleu --cpu > "$EXP/generate-test.txt" 2> "$EXP/generate-test.log"
grep -E "^Generate test" "$EXP/generate-test.txt" || true

echo "== scoring ($EXP/generate-test.txt)"
"$PY" scripts/score_toy.py --generate-log "$EXP/generate-test.txt" --manifest "$CORPUS/test.tsv"
