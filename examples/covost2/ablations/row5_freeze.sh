#!/usr/bin/env bash
# Ablation row 5: + Whisper frozen for the first 5 of 15 epochs (encoder gradient x2 is on in every row, as in the original); see ../README.md
set -euo pipefail
export FREEZE_WHISPER=1
exec "$(dirname "${BASH_SOURCE[0]}")/../train_comsl.sh" --st-weight 0.35 --asr-weight 0.35 --mt-weight 0.2 --cml-weight 0 --ddm-alpha 0.8 "$@"
