#!/usr/bin/env bash
# Decode each language's CoVoST 2 test set with beam 5 and write the per-language table.
#
# Usage: DATA=... [DIRECTION=x-en|en-x] evaluate.sh CKPT [EVAL_DIR]
# Environment: DATA (manifests + config.yaml, required), DIRECTION [x-en]: x-en decodes
#              test_{lang}_en for the source languages LANGS (default: all 21); en-x decodes
#              test_en_{lang} for the target languages LANGS (default: all 15); each row's own
#              target tag is forced (--prefix-size 1). A model trained on both directions is
#              evaluated once per direction, into two EVAL_DIRs.
#              CONFIG_YAML [config.yaml] the data config, relative to DATA (the one training used),
#              DECODE_ASR=1 (also ASR WER: speech -> transcript), DECODE_MT=1 (also MT BLEU on gold
#              transcripts), BATCH_SIZE [16], EXTRA (more fairseq-generate flags, e.g. --cpu),
#              AVERAGE_LAST [1]: N > 1 averages the last N epoch checkpoints in CKPT's folder
#              (train with --keep-last-epochs N; train_comsl.sh keeps 5) and decodes the average
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
ckpt="${1:?usage: DATA=... evaluate.sh CKPT [EVAL_DIR]}"
out="${2:-$(dirname "$ckpt")/eval}"
: "${DATA:?set DATA to the folder with test_{lang}_en.tsv and config.yaml}"
DIRECTION="${DIRECTION:-x-en}"
case "$DIRECTION" in
  x-en) LANGS="${LANGS:-fr,de,ca,es,fa,it,ru,pt,zh-CN,nl,tr,et,mn,ar,lv,sl,sv-SE,ta,ja,id,cy}" ;;
  en-x) LANGS="${LANGS:-de,ca,zh-CN,fa,et,mn,tr,ar,sv-SE,lv,sl,ta,ja,id,cy}" ;;
  *) echo "DIRECTION must be x-en or en-x, not $DIRECTION" >&2; exit 2 ;;
esac
test_set() { if [ "$DIRECTION" = x-en ]; then echo "test_$1_en"; else echo "test_en_$1"; fi; }
BATCH_SIZE="${BATCH_SIZE:-16}"
mkdir -p "$out"
if [ "${AVERAGE_LAST:-1}" -gt 1 ]; then
  avg="$out/checkpoint_avg_last${AVERAGE_LAST}.pt"
  comsl-average-checkpoints --save-dir "$(dirname "$ckpt")" --last "$AVERAGE_LAST" \
    --allow-fewer --out "$avg" >&2
  ckpt="$avg"
fi

decode() {  # decode_task subdir lang
  local task="$1" dir="$2" name
  name="$(test_set "$3")"
  mkdir -p "$dir"
  # --required-batch-size-multiple 1: never drop a last partial batch (the score checks the count)
  fairseq-generate "$DATA" --user-dir "$root/comsl_fairseq" --task comsl_speech_to_text --config-yaml "${CONFIG_YAML:-config.yaml}" \
    --gen-subset "$name" --path "$ckpt" --beam 5 --prefix-size 1 --batch-size "$BATCH_SIZE" \
    --required-batch-size-multiple 1 --decode-task "$task" --scoring sacrebleu ${EXTRA:-} \
    > "$dir/generate-$name.txt" 2> "$dir/generate-$name.log"
  echo "$task $name: $(grep -E '^Generate' "$dir/generate-$name.txt" || echo 'no score line')" >&2
}

IFS=',' read -ra langs <<< "$LANGS"
for lang in "${langs[@]}"; do
  decode st "$out" "$lang"
  if [ "${DECODE_ASR:-0}" = 1 ]; then decode asr "$out/asr" "$lang"; fi
  if [ "${DECODE_MT:-0}" = 1 ]; then decode mt "$out/mt" "$lang"; fi
done
comsl-score-covost --gen-dir "$out" --data "$DATA" --langs "$LANGS" --direction "$DIRECTION"
