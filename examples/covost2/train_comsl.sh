#!/usr/bin/env bash
# Shared ComSL training recipe (SPEC §4): one fairseq-train call with the paper's
# optimisation settings; each script in ablations/ adds one row's loss flags.
#
# Usage: DATA=... SAVE_DIR=... [WHISPER=... MBART=...] train_comsl.sh [more fairseq-train flags]
#
# Environment (defaults in brackets):
#   DATA          folder with the manifests and config.yaml (required)
#   SAVE_DIR      checkpoint folder (required)
#   ARCH          [whisper_mbart_composite_medium]; _large for ComSL Large, _tiny for smoke tests
#   WHISPER       openai-whisper checkpoint (medium.pt / large-v2.pt); required except for _tiny
#   MBART         fairseq mBART-50 model.pt to start from (the paper starts from mBART-50 fine-tuned
#                 on the CoVoST 2 transcript->translation pairs); required except for _tiny
#   MT_TEACHER    frozen fine-tuned mBART for MT regularization (rows 6-8)
#   TRAIN_SUBSET  [train] comma-separated manifests;  VALID_SUBSET [dev]
#   BATCH_SIZE    [16] utterances per GPU per step;  NUM_GPUS [1];  UPDATE_FREQ [1]
#   MAX_EPOCH     [15];  LR [2e-5];  WARMUP [5000]
#   KEEP_LAST_EPOCHS [5] epoch checkpoints kept (for averaging);  TENSORBOARD_DIR [SAVE_DIR/tensorboard]
# Set by the row scripts (training strategies of the paper):
#   FREEZE_WHISPER=1   run Whisper without gradients for the first FREEZE_EPOCHS [5] epochs
#   ENC_GRAD_MULT      [1.0] gradient multiplier on the speech-only and text-only encoder outputs
#   USE_MT_TEACHER=1   MT regularization by MT_TEACHER (required then), alpha 0.2
#   USE_PSEUDO_ST=1    add the pseudo-ST manifests PSEUDO_SUBSETS (required then) to TRAIN_SUBSET
# Updates per epoch are estimated from the manifests' row count and the effective batch;
# they size the polynomial decay (power 2, down to 1e-7) and the Whisper freeze.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
: "${DATA:?set DATA to the folder with the manifests and config.yaml}"
: "${SAVE_DIR:?set SAVE_DIR to the checkpoint folder}"
ARCH="${ARCH:-whisper_mbart_composite_medium}"
TRAIN_SUBSET="${TRAIN_SUBSET:-train}"
VALID_SUBSET="${VALID_SUBSET:-dev}"
BATCH_SIZE="${BATCH_SIZE:-16}"
NUM_GPUS="${NUM_GPUS:-1}"
UPDATE_FREQ="${UPDATE_FREQ:-1}"
MAX_EPOCH="${MAX_EPOCH:-15}"
FREEZE_EPOCHS="${FREEZE_EPOCHS:-5}"
LR="${LR:-2e-5}"
WARMUP="${WARMUP:-5000}"
KEEP_LAST_EPOCHS="${KEEP_LAST_EPOCHS:-5}"  # evaluate.sh averages the last AVERAGE_LAST of them
TENSORBOARD_DIR="${TENSORBOARD_DIR:-$SAVE_DIR/tensorboard}"
if [ "${USE_PSEUDO_ST:-0}" = 1 ]; then
  : "${PSEUDO_SUBSETS:?set PSEUDO_SUBSETS to the pseudo-ST manifests (make_pseudo_st.py)}"
  TRAIN_SUBSET="$TRAIN_SUBSET,$PSEUDO_SUBSETS"
fi

rows=0
IFS=',' read -ra subsets <<< "$TRAIN_SUBSET"
for s in "${subsets[@]}"; do
  [ -f "$DATA/$s.tsv" ] || { echo "missing manifest $DATA/$s.tsv" >&2; exit 2; }
  rows=$((rows + $(wc -l < "$DATA/$s.tsv") - 1))
done
per_update=$((BATCH_SIZE * NUM_GPUS * UPDATE_FREQ))
updates_per_epoch=$(((rows + per_update - 1) / per_update))
total_updates=$((updates_per_epoch * MAX_EPOCH))

strategy=(--enc-grad-mult "${ENC_GRAD_MULT:-1.0}")
if [ "${FREEZE_WHISPER:-0}" = 1 ]; then
  strategy+=(--freeze-whisper-updates $((updates_per_epoch * FREEZE_EPOCHS)))
fi
if [ "${USE_MT_TEACHER:-0}" = 1 ]; then
  : "${MT_TEACHER:?set MT_TEACHER to the fine-tuned mBART (finetune_mbart50.sh)}"
  strategy+=(--mt-teacher "$MT_TEACHER" --mt-reg-alpha 0.2)
fi

pretrained=()
if [ -n "${WHISPER:-}" ]; then pretrained+=(--whisper-checkpoint "$WHISPER"); fi
if [ -n "${MBART:-}" ]; then pretrained+=(--mbart-checkpoint "$MBART"); fi
if [ "$ARCH" != whisper_mbart_composite_tiny ] && [ ${#pretrained[@]} -lt 4 ]; then
  echo "set WHISPER and MBART (pretrained checkpoints) for $ARCH" >&2; exit 2
fi

echo "ComSL recipe: $rows training rows, $updates_per_epoch updates/epoch, $total_updates updates in all" >&2
exec fairseq-train "$DATA" --user-dir "$root/comsl_fairseq" \
  --task comsl_speech_to_text --config-yaml config.yaml \
  --train-subset "$TRAIN_SUBSET" --valid-subset "$VALID_SUBSET" \
  --arch "$ARCH" "${pretrained[@]}" --dropout 0.1 \
  --criterion comsl_multitask "${strategy[@]}" \
  --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-6 --weight-decay 0.1 \
  --lr "$LR" --lr-scheduler polynomial_decay --warmup-updates "$WARMUP" --end-learning-rate 1e-7 --power 2 \
  --total-num-update "$total_updates" --max-epoch "$MAX_EPOCH" \
  --batch-size "$BATCH_SIZE" --update-freq "$UPDATE_FREQ" --required-batch-size-multiple 1 \
  --save-dir "$SAVE_DIR" --keep-last-epochs "$KEEP_LAST_EPOCHS" \
  --tensorboard-logdir "$TENSORBOARD_DIR" \
  --eval-bleu --best-checkpoint-metric bleu --maximize-best-checkpoint-metric \
  "$@"
