#!/usr/bin/env bash
# Both directions in one model, in miniature (`make demo-both-ways`): the toy corpus with English
# speech added (make_toy_corpus.py --en-x-targets fr,de,es), one ComSL model trained on the X->En
# rows (fr/de/es numbers -> English words) and the En->X rows (English numbers -> fr/de/es words)
# together, each row with its own target tag, on the real OpenAI Whisper base, as `make demo`:
#
#   1. corpus in $CORPUS: the demo's X->En sets plus train_en_x, test_en_x, unseen_voices_en_x,
#      noise_10db_en_x (the same held-out numbers, voices and noise as the X->En sets);
#   2. MT stage: examples/covost2/finetune_mbart50.sh, a tiny random-init mBART on the transcript ->
#      translation pairs of both directions (train_mt, train_mt_en_x); it is also the MT teacher;
#   3. ComSL: examples/covost2/ablations/row7_cml.sh on train + train_en_x (Whisper frozen, cached);
#   4. the six test sets decoded with beam 5 and --prefix-size 1 (each row's own target tag forced)
#      and scored: one line per direction and set, `x-en test: BLEU = X, exact_match = Y%`.
#
# Environment: as run_demo.sh (PY, SEED, DEMO_PROCS, DEMO_TRAIN_NUMBERS, DEMO_TRAIN_VOICES,
#   DEMO_TEST_VARIANTS, DEMO_MT_EPOCHS, DEMO_MT_LR, DEMO_EPOCHS, DEMO_LR, DEMO_WARMUP, DEMO_BATCH,
#   DEMO_CACHE [data/whisper_cache_both_ways]: its own folder, as the demo's features come from
#   the demo's batches), with CORPUS [data/toy_both] and EXP [exp/both_ways].
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
CORPUS="${CORPUS:-data/toy_both}"
EXP="${EXP:-exp/both_ways}"
source examples/toy/stages.sh  # PY, BIN, SEED, PROCS; toy_corpus, mt_stage, comsl_row, decode_sets
need_espeak_ng

echo "== the toy corpus in $CORPUS: numbers 0-999 spoken in fr/de/es (-> English words) and in English" \
     "(-> fr/de/es words)"
toy_corpus --en-x-targets fr,de,es
X_EN=(test unseen_voices noise_10db)
EN_X=(test_en_x unseen_voices_en_x noise_10db_en_x)
for s in "${X_EN[@]}" "${EN_X[@]}"; do
  [ -f "$CORPUS/$s.tsv" ] || { echo "corpus: $CORPUS/$s.tsv is missing" >&2; exit 1; }
done

rm -rf "$EXP"
mkdir -p "$EXP"
WHISPER="${WHISPER:-data/whisper/base.pt}"
"$PY" examples/toy/whisper_base.py --out "$WHISPER"

mt_stage "$EXP/mt" train_mt,train_mt_en_x  # both directions
MT="$EXP/mt/checkpoint_last.pt"

EPOCHS="${DEMO_EPOCHS:-6}"
FREEZE_EPOCHS="$EPOCHS"  # frozen throughout
BATCH="${DEMO_BATCH:-16}"
LR="${DEMO_LR:-2e-3}"
WARMUP="${DEMO_WARMUP:-50}"
echo "== ComSL (row 7) on both directions: Whisper base (frozen) + adapter + the MT-stage model," \
     "$EPOCHS epochs of $((BATCH * PROCS)) clips per update, $PROCS process(es) x 1 thread"
TRAIN_SUBSET=train,train_en_x comsl_row examples/covost2/ablations/row7_cml.sh "$EXP" \
  --whisper-feature-cache "${DEMO_CACHE:-data/whisper_cache_both_ways}"

echo "== decoding the six test sets with beam 5, each row's target tag forced ($PROCS at a time)"
decode_sets "$EXP" "${X_EN[@]}" "${EN_X[@]}"

summary=()
for s in "${X_EN[@]}" "${EN_X[@]}"; do
  case "$s" in *_en_x) name="en-x ${s%_en_x}" ;; *) name="x-en $s" ;; esac
  echo "== scoring $name ($EXP/generate-$s.txt)"
  out="$("$PY" examples/toy/score_toy.py --generate-log "$EXP/generate-$s.txt" --manifest "$CORPUS/$s.tsv" \
         --name "$name" --json "$EXP/score-$s.json")"
  echo "$out" | sed '$d'
  summary+=("$(echo "$out" | tail -n 1)")
done
echo "== both ways: ran $((SECONDS / 60)) min $((SECONDS % 60)) s"
printf '%s\n' "${summary[@]}"
