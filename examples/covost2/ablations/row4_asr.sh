#!/usr/bin/env bash
# Ablation row 4: + ASR task; see ../README.md
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../train_comsl.sh" --st-weight 0.35 --asr-weight 0.35 --mt-weight 0.2 --cml-weight 0 --ddm-alpha 0.8 "$@"
