#!/usr/bin/env bash
# Ablation row 2: + MT task. Paper: 26.31
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../train_comsl.sh" --st-weight 0.35 --asr-weight 0 --mt-weight 0.2 --cml-weight 0 --ddm-alpha 0 "$@"
