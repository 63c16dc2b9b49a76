#!/usr/bin/env bash
# Ablation row 8: + pseudo ST data (PSEUDO_SUBSETS from make_pseudo_st.py). Paper: 30.77
set -euo pipefail
export FREEZE_WHISPER=1 USE_MT_TEACHER=1 USE_PSEUDO_ST=1
exec "$(dirname "${BASH_SOURCE[0]}")/../train_comsl.sh" --st-weight 0.35 --asr-weight 0.35 --mt-weight 0.2 --cml-weight 0.1 --erm-weight 0.2 --mask-prob 0.15 --erm-layer 4 --ddm-alpha 0.8 "$@"
