#!/usr/bin/env bash
# Ablation row 6: + MT regularization by a frozen fine-tuned mBART (alpha_t 0.2); see ../README.md
set -euo pipefail
export FREEZE_WHISPER=1 USE_MT_TEACHER=1
exec "$(dirname "${BASH_SOURCE[0]}")/../train_comsl.sh" --st-weight 0.35 --asr-weight 0.35 --mt-weight 0.2 --cml-weight 0 --ddm-alpha 0.8 "$@"
