#!/usr/bin/env bash
# Ablation row 7: + cross-modality learning (CML): the full ComSL objective. Paper: ComSL Medium main result 29.7; see ../README.md
set -euo pipefail
export FREEZE_WHISPER=1 USE_MT_TEACHER=1
exec "$(dirname "${BASH_SOURCE[0]}")/../train_comsl.sh" --st-weight 0.35 --asr-weight 0.35 --mt-weight 0.2 --cml-weight 0.1 --erm-weight 0.2 --mask-prob 0.15 --erm-layer 4 --ddm-alpha 0.8 "$@"
