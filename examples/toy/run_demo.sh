#!/usr/bin/env bash
# The demo behind `make demo`: build the toy spoken-numbers corpus, train a tiny ComSL model
# from random initialisation for a fixed number of updates with a fixed seed (so the score is
# the same on any machine, only the time varies), decode the whole held-out test set with
# beam 5, and score it (sacreBLEU, exact match, examples).
#
# Training runs as DEMO_PROCS data-parallel processes of one thread each (torchrun, gloo), each
# reading DEMO_MAX_TOKENS audio samples per batch: on a 2-core CPU two one-thread processes keep
# both cores busier than one two-thread process does on these small matrices, and because every
# process has exactly one thread the arithmetic (so the score) does not depend on the core count.
#
# Environment: PY (python of the venv), CORPUS [data/toy], EXP [exp/demo], SEED [1],
#              DEMO_UPDATES [900], DEMO_LR [3e-3], DEMO_WARMUP [150], DEMO_PROCS [2],
#              DEMO_MAX_TOKENS [640000], DEMO_SCHEDULE [inverse_sqrt|linear]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY="${PY:-.venv/bin/python}"
BIN="$(dirname "$PY")"
CORPUS="${CORPUS:-data/toy}"
EXP="${EXP:-exp/demo}"
SEED="${SEED:-1}"
UPDATES="${DEMO_UPDATES:-900}"
LR="${DEMO_LR:-3e-3}"
WARMUP="${DEMO_WARMUP:-150}"
PROCS="${DEMO_PROCS:-2}"
MAX_TOKENS="${DEMO_MAX_TOKENS:-640000}"
export PYTHONUNBUFFERED=1  # show training progress as it happens

if ! command -v espeak-ng >/dev/null; then
  echo "The demo synthesizes its corpus with espeak-ng, which is missing: \`make demo\` (or \`make install\`)" >&2
  echo "installs it with apt-get; elsewhere install the espeak-ng package yourself." >&2
  exit 1
fi

echo "== the toy corpus in $CORPUS (numbers 0-999 spoken in fr/de/es; ~1.5 minutes the first time)"
"$PY" examples/toy/make_toy_corpus.py --out "$CORPUS"  # reuses the clips of an earlier run made the same way

echo "== training whisper_mbart_composite_tiny from scratch: $UPDATES updates, seed $SEED," \
     "$PROCS process(es) x 1 thread (progress every 100 updates)"
rm -rf "$EXP"
mkdir -p "$EXP"
# The learning rate warms up for $WARMUP updates, then decays with the inverse square root of
# the update number (DEMO_SCHEDULE=linear: linearly to zero at the last update instead).
if [ "${DEMO_SCHEDULE:-inverse_sqrt}" = linear ]; then
  schedule=(--lr-scheduler polynomial_decay --total-num-update "$UPDATES" --end-learning-rate 0 --power 1)
else
  schedule=(--lr-scheduler inverse_sqrt)
fi
launch=("$BIN/fairseq-train")
distributed=()
if [ "$PROCS" -gt 1 ]; then
  launch=("$BIN/torchrun" --standalone --nproc-per-node "$PROCS" -m fairseq_cli.train)
  distributed=(--distributed-world-size "$PROCS" --distributed-backend gloo)
fi
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "${launch[@]}" "$CORPUS" "${distributed[@]}" \
  --user-dir comsl_fairseq --task comsl_speech_to_text \
  --train-subset train --valid-subset dev --arch whisper_mbart_composite_tiny \
  --criterion comsl_multitask --st-weight 1 --asr-weight 1 --mt-weight 0 --ddm-alpha 0 \
  --cml-weight 0 --ctc-weight 1 --adapter-activation gelu --dropout 0 \
  --optimizer adam --adam-betas '(0.9, 0.98)' --lr "$LR" "${schedule[@]}" --warmup-updates "$WARMUP" \
  --clip-norm 1.0 --max-tokens "$MAX_TOKENS" --required-batch-size-multiple 1 --num-workers 1 \
  --max-update "$UPDATES" --save-dir "$EXP" --no-epoch-checkpoints --disable-validation \
  --log-interval 100 --log-format json --tensorboard-logdir "$EXP/tensorboard" --seed "$SEED" --cpu 2>&1 \
  | "$PY" examples/toy/train_progress.py --total "$UPDATES" --log "$EXP/train.log"

echo "== decoding the held-out test set with beam 5"
"$BIN/fairseq-generate" "$CORPUS" --user-dir comsl_fairseq --task comsl_speech_to_text --gen-subset test \
  --path "$EXP/checkpoint_last.pt" --beam 5 --prefix-size 1 --batch-size 64 --required-batch-size-multiple 1 \
  --scoring sacrebleu --cpu > "$EXP/generate-test.txt" 2> "$EXP/generate-test.log"
grep -E "^Generate test" "$EXP/generate-test.txt" || true

echo "== training curves (TensorBoard events in $EXP/tensorboard)"
"$PY" scripts/plot_training.py "$EXP/train.log" --out "$EXP/curves.png"

echo "== scoring ($EXP/generate-test.txt); the demo ran $((SECONDS / 60)) min $((SECONDS % 60)) s"
"$PY" examples/toy/score_toy.py --generate-log "$EXP/generate-test.txt" --manifest "$CORPUS/test.tsv"
