#!/usr/bin/env bash
# Stage 2: fine-tune mBART-50 on every CoVoST 2 transcript -> translation pair.
# The result initialises ComSL (MBART=$SAVE_DIR/checkpoint_best.pt) and is the frozen MT
# teacher (MT_TEACHER=...) of rows 6-8: both loaders read the mBART part of our checkpoints.
#
# It runs through our own task in text-only mode (--text-only: no audio is read) with only
# the MT term, rather than fairseq's translation_multi_simple_epoch, so that the data, the
# dictionary (mBART-50's + [cy_GB] [ca_ES], which mBART-50 lacks and Welsh/Catalan need), the
# SentencePiece model and the token conventions ([src_tag] x </s> -> </s> [tgt_tag] y) are
# exactly those of ComSL training and decoding, with no separate binarization step.
#
# Usage: DATA=... MBART=mbart50/model.pt SAVE_DIR=... finetune_mbart50.sh [more fairseq-train flags]
# Environment: TRAIN_SUBSET [train], VALID_SUBSET [dev], BATCH_SIZE [32], MAX_EPOCH [3], LR [3e-5],
#              WARMUP [2500], ARCH [whisper_mbart_composite_tiny: no Whisper weights are needed here]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
: "${DATA:?set DATA}" "${MBART:?set MBART to mBART-50 model.pt}" "${SAVE_DIR:?set SAVE_DIR}"
exec fairseq-train "$DATA" --user-dir "$root/comsl_fairseq" --task comsl_speech_to_text --config-yaml config.yaml \
  --text-only --train-subset "${TRAIN_SUBSET:-train}" --valid-subset "${VALID_SUBSET:-dev}" \
  --arch "${ARCH:-whisper_mbart_composite_tiny}" --mbart-checkpoint "$MBART" \
  --criterion comsl_multitask --st-weight 0 --asr-weight 0 --cml-weight 0 --ddm-alpha 0 --mt-weight 1 \
  --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-6 --weight-decay 0.0 --clip-norm 1.0 \
  --lr "${LR:-3e-5}" --lr-scheduler inverse_sqrt --warmup-updates "${WARMUP:-2500}" \
  --batch-size "${BATCH_SIZE:-32}" --max-epoch "${MAX_EPOCH:-3}" --required-batch-size-multiple 1 \
  --save-dir "$SAVE_DIR" --keep-last-epochs 1 \
  --tensorboard-logdir "${TENSORBOARD_DIR:-$SAVE_DIR/tensorboard}" "$@"
