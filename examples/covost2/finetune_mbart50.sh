#!/usr/bin/env bash
# Stage 2: fine-tune mBART-50 on every CoVoST 2 transcript -> translation pair.
# The result initialises ComSL (MBART=$SAVE_DIR/checkpoint_best.pt), is the frozen MT teacher
# (MT_TEACHER=...) of rows 6-8 and writes the pseudo labels (make_pseudo_st.py): all three read
# the mBART part of our checkpoints.
#
# The model is --arch mbart50_text: the mBART-50 encoder-decoder alone, so its checkpoint holds
# no speech weights. It runs through our own task in text-only mode (--text-only: no audio is
# read) with only the MT term, rather than fairseq's translation_multi_simple_epoch, so that the
# data, the dictionary (mBART-50's + [cy_GB] [ca_ES], which mBART-50 lacks and Welsh/Catalan
# need), the SentencePiece model and the token conventions ([src_tag] x </s> -> </s> [tgt_tag] y)
# are exactly those of ComSL training and decoding, with no separate binarization step.
#
# Optimisation as the original's MT stage: dropout 0.3, attention dropout 0.1, lr 2e-5 with
# 2,500 warm-up updates then linear decay to 0, 5 epochs, 20 sentences x 2 accumulation per
# GPU, no gradient clipping. The decay's length is measured, not estimated: epoch_polynomial_decay
# decays over MT_MAX_EPOCH x the updates per epoch of fairseq's epoch iterator.
#
# Usage: DATA=... MBART=mbart50/model.pt SAVE_DIR=... finetune_mbart50.sh [more fairseq-train flags]
# (MT_ARCH=mbart50_text_tiny without MBART: a tiny random-init mBART, the toy demo's MT stage)
# Environment (MT_ names, so that the ComSL stage's settings never leak in): TRAIN_SUBSET [train],
#   VALID_SUBSET [dev], CONFIG_YAML [config.yaml, relative to DATA], MT_BATCH_SIZE [20],
#   MT_UPDATE_FREQ [2], MT_MAX_EPOCH [5],
#   MT_LR [2e-5], MT_WARMUP [2500], MT_DROPOUT [0.3], MT_ATTENTION_DROPOUT [0.1], MT_ARCH [mbart50_text]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
: "${DATA:?set DATA}" "${SAVE_DIR:?set SAVE_DIR}"
pretrained=()
if [ -n "${MBART:-}" ]; then
  pretrained=(--mbart-checkpoint "$MBART")
elif [ "${MT_ARCH:-mbart50_text}" != mbart50_text_tiny ]; then
  echo "set MBART to mBART-50 model.pt" >&2; exit 2
fi
TRAIN_SUBSET="${TRAIN_SUBSET:-train}"
BATCH_SIZE="${MT_BATCH_SIZE:-20}"
UPDATE_FREQ="${MT_UPDATE_FREQ:-2}"
MAX_EPOCH="${MT_MAX_EPOCH:-5}"
IFS=',' read -ra subsets <<< "$TRAIN_SUBSET"
for s in "${subsets[@]}"; do
  [ -f "$DATA/$s.tsv" ] || { echo "missing manifest $DATA/$s.tsv" >&2; exit 2; }
done
exec fairseq-train "$DATA" --user-dir "$root/comsl_fairseq" --task comsl_speech_to_text --config-yaml "${CONFIG_YAML:-config.yaml}" \
  --text-only --train-subset "$TRAIN_SUBSET" --valid-subset "${VALID_SUBSET:-dev}" \
  --arch "${MT_ARCH:-mbart50_text}" "${pretrained[@]}" \
  --dropout "${MT_DROPOUT:-0.3}" --attention-dropout "${MT_ATTENTION_DROPOUT:-0.1}" \
  --criterion comsl_multitask --st-weight 0 --asr-weight 0 --cml-weight 0 --ddm-alpha 0 --mt-weight 1 \
  --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-6 --weight-decay 0.0 --clip-norm 0 \
  --lr "${MT_LR:-2e-5}" --lr-scheduler epoch_polynomial_decay --power 1 --end-learning-rate 0 \
  --warmup-updates "${MT_WARMUP:-2500}" \
  --batch-size "$BATCH_SIZE" --update-freq "$UPDATE_FREQ" --max-epoch "$MAX_EPOCH" \
  --required-batch-size-multiple 1 --save-dir "$SAVE_DIR" --keep-last-epochs 1 \
  --tensorboard-logdir "${TENSORBOARD_DIR:-$SAVE_DIR/tensorboard}" "$@"
