#!/usr/bin/env bash
# Ablation row 1: ST loss only. Paper (ComSL Medium, CoVoST 2 avg BLEU): 26.48
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../train_comsl.sh" --st-weight 1.0 --asr-weight 0 --mt-weight 0 --cml-weight 0 --ddm-alpha 0 "$@"
