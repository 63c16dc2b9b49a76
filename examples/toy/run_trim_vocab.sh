#!/usr/bin/env bash
# The vocabulary-trimming A/B behind `make trim-vocab-ab`: does training and decoding with a trimmed
# vocabulary (trim_vocab, comsl-trim-vocab) change BLEU? The demo's own corpus cannot tell: its
# 160-piece dictionary is trained on the training text and used whole. Here the corpus' SentencePiece
# model and dict.txt are trained on the number words 0..9,999 of every language num2words spells
# (about 45), so that, as with mBART-50's 250k pieces and X->En, the toy's text uses a few percent of
# a multilingual dictionary. Both arms then run the demo's pipeline (run_demo.sh: the MT stage, then
# row 7 on Whisper base, frozen, with the MT-stage model as initialisation and teacher) with the same
# seed, clips and cached Whisper features (filled first, so that nothing runs beside the timed stages):
#   full     config.yaml: every row of the dictionary in the embeddings and the output layer;
#   trimmed  config_trimmed.yaml = config.yaml + trim_vocab: the pieces of the training manifests
#            (train and train_mt, written by comsl-trim-vocab before the MT stage), tags and specials.
# Each arm is decoded with beam 5 on the demo's three test sets, and comsl-compare-systems gives
# trimmed - full with its 95 % paired-bootstrap interval per set: EXP/compare-SET.json.
#
# Environment: PY, CORPUS [data/toy_multilingual], EXP [exp/trim_vocab], SEED [1], DEMO_PROCS [2],
#   TRIM_VOCAB_SIZE [8000] (SentencePiece pieces), TRIM_CACHE [data/whisper_cache_trim_vocab] (the
#   Whisper features both arms read, in a folder of their own), and the demo's DEMO_* budget variables.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
CORPUS="${CORPUS:-data/toy_multilingual}"
EXP="${EXP:-exp/trim_vocab}"
WHISPER="${WHISPER:-data/whisper/base.pt}"
source examples/toy/stages.sh  # PY, BIN, SEED, PROCS and the stages
need_espeak_ng

echo "== the toy corpus with a multilingual dictionary in $CORPUS (the demo's clips; the SentencePiece model takes ~30 s)"
toy_corpus --vocab-languages all --vocab-numbers 10000 --vocab-size "${TRIM_VOCAB_SIZE:-8000}"
SETS=(test unseen_voices noise_10db)
"$BIN/comsl-trim-vocab" "$CORPUS" --splits train --manifests "$CORPUS/train_mt.tsv" 2>&1 | grep -v "^INFO"
{ cat "$CORPUS/config.yaml"; echo "trim_vocab: vocab_keep.txt"; } > "$CORPUS/config_trimmed.yaml"
"$PY" examples/toy/whisper_base.py --out "$WHISPER"

rm -rf "$EXP"
mkdir -p "$EXP"
demo_comsl_settings  # the demo's: ROW (row 7), EPOCHS, FREEZE_EPOCHS, BATCH, LR, WARMUP
CACHE=(--whisper-feature-cache "${TRIM_CACHE:-data/whisper_cache_trim_vocab}")
echo "== the Whisper feature cache both arms read (comsl-cache-features with row 7's flags; reused when filled)"
MT="$EXP/no_mt_yet.pt"  # the fill reads no mBART weights
CACHE_FEATURES=1 row_command "$ROW" "$EXP/cache_fill" "${CACHE[@]}" > "$EXP/cache_fill.log" 2>&1 \
  || { echo "filling the Whisper feature cache failed: see $EXP/cache_fill.log" >&2; exit 1; }
grep -h '^Whisper feature cache' "$EXP/cache_fill.log" | sed 's/^/   /' || true
for arm in full trimmed; do
  case "$arm" in full) export CONFIG_YAML=config.yaml;; trimmed) export CONFIG_YAML=config_trimmed.yaml;; esac
  save="$EXP/$arm"
  MT="$save/mt/checkpoint_last.pt"
  t0=$SECONDS
  mt_stage "$save/mt"
  echo "== $arm ($CONFIG_YAML): row 7 on Whisper base (frozen) + adapter + the MT-stage model, $EPOCHS epochs"
  t1=$SECONDS
  comsl_row "$ROW" "$save" "${CACHE[@]}"
  t2=$SECONDS
  decode_sets "$save" "${SETS[@]}"
  echo "MT stage $((t1 - t0)) s, ComSL $((t2 - t1)) s, decoding $((SECONDS - t2)) s" > "$save/time.txt"
  echo "   $arm: $(cat "$save/time.txt")"
done

echo "== trimmed - full, per test set (paired bootstrap, 1,000 resamples)"
for s in "${SETS[@]}"; do
  echo "-- $s"
  "$BIN/comsl-compare-systems" "$EXP/full/generate-$s.txt" "$EXP/trimmed/generate-$s.txt" --data "$CORPUS" \
    --out "$EXP/compare-$s.json"
done
echo "== the A/B ran $((SECONDS / 60)) min $((SECONDS % 60)) s"
