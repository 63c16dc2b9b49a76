#!/usr/bin/env bash
# Ablation row 3: + decoder distribution matching (DDM, alpha 0.8); see ../README.md
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../train_comsl.sh" --st-weight 0.35 --asr-weight 0 --mt-weight 0.2 --cml-weight 0 --ddm-alpha 0.8 "$@"
