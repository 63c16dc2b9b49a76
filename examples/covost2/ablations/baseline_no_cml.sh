#!/usr/bin/env bash
# Modality-gap baseline: every training strategy of row 7, no cross-modality method (the comparison's reference; ComSL CML reaches 29.69 there)
set -euo pipefail
export FREEZE_WHISPER=1 USE_MT_TEACHER=1
exec "$(dirname "${BASH_SOURCE[0]}")/../train_comsl.sh" --st-weight 0.35 --asr-weight 0.35 --mt-weight 0.2 --cml-weight 0 --ddm-alpha 0.8 "$@"
