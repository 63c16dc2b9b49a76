#!/usr/bin/env bash
# The demo behind `make demo`: build the toy spoken-numbers corpus, train a tiny ComSL model
# from random initialisation for a fixed number of updates with a fixed seed (so the score is
# the same on any machine, only the time varies), decode the whole held-out test set with
# beam 5, and score it (sacreBLEU, exact match, examples).
#
# Environment: PY (python of the venv), CORPUS [data/toy], EXP [exp/demo], SEED [1],
#              DEMO_UPDATES [1600], DEMO_LR [3e-3], DEMO_WARMUP [150], DEMO_SCHEDULE [inverse_sqrt|linear]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PY:-.venv/bin/python}"
BIN="$(dirname "$PY")"
CORPUS="${CORPUS:-data/toy}"
EXP="${EXP:-exp/demo}"
SEED="${SEED:-1}"
UPDATES="${DEMO_UPDATES:-1600}"
LR="${DEMO_LR:-3e-3}"
WARMUP="${DEMO_WARMUP:-150}"
export PYTHONUNBUFFERED=1  # show training progress as it happens

if ! command -v espeak-ng >/dev/null; then
  echo "The demo synthesizes its corpus with espeak-ng, which is missing: \`make demo\` (or \`make install\`)" >&2
  echo "installs it with apt-get; elsewhere install the espeak-ng package yourself." >&2
  exit 1
fi

if [ ! -f "$CORPUS/test.tsv" ]; then
  echo "== building the toy corpus in $CORPUS (numbers 0-999 spoken in fr/de/es, ~1 minute)"
  "$PY" scripts/make_toy_corpus.py --out "$CORPUS"
fi

echo "== training whisper_mbart_composite_tiny from scratch: $UPDATES updates, seed $SEED (progress every 100 updates)"
rm -rf "$EXP"
mkdir -p "$EXP"
# The learning rate warms up for $WARMUP updates, then decays with the inverse square root of
# the update number (DEMO_SCHEDULE=linear: linearly to zero at the last update instead).
if [ "${DEMO_SCHEDULE:-inverse_sqrt}" = linear ]; then
  schedule=(--lr-scheduler polynomial_decay --total-num-update "$UPDATES" --end-learning-rate 0 --power 1)
else
  schedule=(--lr-scheduler inverse_sqrt)
fi
"$BIN/fairseq-train" "$CORPUS" --user-dir comsl_fairseq --task comsl_speech_to_text \
  --train-subset train --valid-subset dev --arch whisper_mbart_composite_tiny \
  --criterion comsl_multitask --st-weight 1 --asr-weight 1 --mt-weight 0.5 --ddm-alpha 0.8 \
  --cml-weight 0 --ctc-weight 1 --adapter-activation gelu --adapter-dropout 0.1 \
  --optimizer adam --adam-betas '(0.9, 0.98)' --lr "$LR" "${schedule[@]}" --warmup-updates "$WARMUP" \
  --clip-norm 1.0 --max-tokens 640000 --required-batch-size-multiple 1 --num-workers 1 \
  --max-update "$UPDATES" --save-dir "$EXP" --no-epoch-checkpoints \
  --log-interval 100 --log-format json --tensorboard-logdir "$EXP/tensorboard" --seed "$SEED" --cpu 2>&1 \
  | "$PY" scripts/train_progress.py --total "$UPDATES" --log "$EXP/train.log"

echo "== decoding the held-out test set with beam 5"
"$BIN/fairseq-generate" "$CORPUS" --user-dir comsl_fairseq --task comsl_speech_to_text --gen-subset test \
  --path "$EXP/checkpoint_last.pt" --beam 5 --prefix-size 1 --batch-size 64 --required-batch-size-multiple 1 \
  --scoring sacrebleu --cpu > "$EXP/generate-test.txt" 2> "$EXP/generate-test.log"
grep -E "^Generate test" "$EXP/generate-test.txt" || true

echo "== training curves (TensorBoard events in $EXP/tensorboard)"
"$PY" scripts/plot_training.py "$EXP/train.log" --out "$EXP/curves.png"

echo "== scoring ($EXP/generate-test.txt)"
"$PY" scripts/score_toy.py --generate-log "$EXP/generate-test.txt" --manifest "$CORPUS/test.tsv"
