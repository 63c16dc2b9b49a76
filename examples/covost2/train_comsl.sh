#!/usr/bin/env bash
# Shared ComSL training recipe: one fairseq-train call with the paper's
# optimisation settings; each script in ablations/ adds one row's loss flags.
#
# Usage: [NPROC_PER_NODE=N NNODES= NODE_RANK= MASTER_ADDR= MASTER_PORT=] DATA=... SAVE_DIR=...
#        [WHISPER=... MBART=...] train_comsl.sh [more fairseq-train flags]
#
# Environment (defaults in brackets):
#   DATA          folder with the manifests and config.yaml (required)
#   CONFIG_YAML   [config.yaml] the data config, relative to DATA (e.g. one with trim_vocab)
#   SAVE_DIR      checkpoint folder (required)
#   ARCH          [whisper_mbart_composite_medium]; _large for ComSL Large, _tiny for smoke tests
#   WHISPER       openai-whisper checkpoint (medium.pt / large-v2.pt); required except for _tiny
#   MBART         fairseq mBART-50 model.pt to start from (the paper starts from mBART-50 fine-tuned
#                 on the CoVoST 2 transcript->translation pairs); required except for _tiny
#   MT_TEACHER    frozen fine-tuned mBART for MT regularization (rows 6-8)
#   TRAIN_SUBSET  [train] comma-separated manifests;  VALID_SUBSET [dev]
#   BATCH_SIZE    [16] utterances per process (GPU) per step
#   GLOBAL_BATCH  [512] utterances per update summed over all processes: --update-freq is set to
#                 GLOBAL_BATCH / (BATCH_SIZE x world size), so 1, 8 or 32 GPUs train the same schedule
#                 (512 = 16 per GPU x 32 GPUs, the original's 4 nodes of 8);  UPDATE_FREQ overrides it
#   KEEP_LAST_EPOCHS [5] epoch checkpoints kept (for averaging);  TENSORBOARD_DIR [SAVE_DIR/tensorboard]
#   MAX_EPOCH     [15];  LR [2e-5];  WARMUP [5000];  DRY_RUN=1 prints the command instead of running it;
#   PREFLIGHT=1 runs comsl-preflight with the same flags instead (checks, timed steps, estimates)
#   CACHE_FEATURES=1 runs comsl-cache-features with the same flags instead: fills the cache that the
#                 frozen epochs read (WHISPER_FEATURE_CACHE, or a --whisper-feature-cache DIR flag) ahead
# Launch: world size = NPROC_PER_NODE x NNODES, started through torchrun when > 1.
#   NPROC_PER_NODE [every visible GPU; 1 with --cpu or without GPUs]  NNODES [1]  NODE_RANK [0]
#   MASTER_ADDR [127.0.0.1]  MASTER_PORT [a free port on one node, else 29500]; under Slurm (one task per node) NNODES, NODE_RANK,
#   MASTER_ADDR (first host of the job) and MASTER_PORT (from the job id) come from Slurm's variables.
# Set by the row scripts (training strategies of the paper):
#   FREEZE_WHISPER=1   run Whisper without gradients for the first FREEZE_EPOCHS [5] epochs (the task
#                      decides at each epoch begin: --freeze-whisper-epochs)
#   WHISPER_FEATURE_CACHE  with FREEZE_WHISPER=1: a folder for the frozen Whisper outputs of every clip
#                      (--whisper-feature-cache): epochs 2..FREEZE_EPOCHS read them instead of running
#                      Whisper (about 2 MB per 10 s clip for Whisper medium: 500 frames x 1024 fp32)
# Speed settings (any row):
#   AUDIO_BUCKET_SECONDS [0] batches of clips whose lengths share a bucket of this many seconds, sorted by
#                      text length inside (--audio-bucket-seconds; 0: by audio length alone)
#   ENC_GRAD_MULT      [2.0, the original's default in every run] gradient multiplier on the
#                      speech-only and text-only encoder outputs
#   EVAL_BLEU_EVERY_NTH [4] dev BLEU (checkpoint selection: mean of per-language BLEU) decodes
#                      every N-th dev utterance, as the original; 1 decodes all
#   USE_MT_TEACHER=1   MT regularization by MT_TEACHER (required then), alpha 0.2
#   USE_PSEUDO_ST=1    add the pseudo-ST manifests PSEUDO_SUBSETS (required then) to TRAIN_SUBSET
# Updates per epoch are not estimated here: the task measures them from fairseq's epoch iterator
# (world size, update freq, filtered rows) and logs "training schedule (measured): ..."; the LR
# scheduler epoch_polynomial_decay decays over MAX_EPOCH x that many updates.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
: "${DATA:?set DATA to the folder with the manifests and config.yaml}"
: "${SAVE_DIR:?set SAVE_DIR to the checkpoint folder}"
ARCH="${ARCH:-whisper_mbart_composite_medium}"
TRAIN_SUBSET="${TRAIN_SUBSET:-train}"
VALID_SUBSET="${VALID_SUBSET:-dev}"
BATCH_SIZE="${BATCH_SIZE:-16}"
GLOBAL_BATCH="${GLOBAL_BATCH:-512}"
MAX_EPOCH="${MAX_EPOCH:-15}"
FREEZE_EPOCHS="${FREEZE_EPOCHS:-5}"
LR="${LR:-2e-5}"
WARMUP="${WARMUP:-5000}"
KEEP_LAST_EPOCHS="${KEEP_LAST_EPOCHS:-5}"  # evaluate.sh averages the last AVERAGE_LAST of them
TENSORBOARD_DIR="${TENSORBOARD_DIR:-$SAVE_DIR/tensorboard}"
if [ "${USE_PSEUDO_ST:-0}" = 1 ]; then
  : "${PSEUDO_SUBSETS:?set PSEUDO_SUBSETS to the pseudo-ST manifests (make_pseudo_st.py)}"
  TRAIN_SUBSET="$TRAIN_SUBSET,$PSEUDO_SUBSETS"
fi

for s in ${TRAIN_SUBSET//,/ }; do
  [ -f "$DATA/$s.tsv" ] || { echo "missing manifest $DATA/$s.tsv" >&2; exit 2; }
done

# ---- launch: world size, torchrun, global batch -> update freq
on_cpu=0
for a in "$@"; do if [ "$a" = --cpu ]; then on_cpu=1; fi; done
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE=1
  if [ "$on_cpu" = 0 ]; then
    gpus="$(python -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
    if [ "$gpus" -gt 0 ]; then NPROC_PER_NODE="$gpus"; fi
  fi
fi
NNODES="${NNODES:-${SLURM_NNODES:-1}}"
NODE_RANK="${NODE_RANK:-${SLURM_NODEID:-0}}"
if [ -z "${MASTER_ADDR:-}" ] && [ -n "${SLURM_JOB_NODELIST:-}" ] && command -v scontrol >/dev/null; then
  MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
fi
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
if [ -z "${MASTER_PORT:-}" ] && [ "$NNODES" = 1 ] && [ -z "${SLURM_JOB_ID:-}" ]; then
  # one node: any free port, so that two runs on one machine do not collide
  MASTER_PORT="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
MASTER_PORT="${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-9500} % 10000))}"
world=$((NPROC_PER_NODE * NNODES))
if [ -z "${UPDATE_FREQ:-}" ]; then
  per_step=$((BATCH_SIZE * world))
  UPDATE_FREQ=$(((GLOBAL_BATCH + per_step - 1) / per_step))
  if [ $((UPDATE_FREQ * per_step)) != "$GLOBAL_BATCH" ]; then
    echo "warning: GLOBAL_BATCH $GLOBAL_BATCH is not a multiple of BATCH_SIZE x world size ($per_step):" \
         "training with $((UPDATE_FREQ * per_step)) utterances per update" >&2
  fi
fi
launch=(fairseq-train)
distributed=()
if [ "$world" -gt 1 ]; then
  launch=(torchrun --nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE" --node-rank "$NODE_RANK"
          --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" -m fairseq_cli.train)
  distributed=(--distributed-world-size "$world")
  if [ "$on_cpu" = 1 ]; then distributed+=(--distributed-backend gloo); fi
fi

strategy=(--enc-grad-mult "${ENC_GRAD_MULT:-2.0}")
if [ "${FREEZE_WHISPER:-0}" = 1 ]; then
  strategy+=(--freeze-whisper-epochs "$FREEZE_EPOCHS")
  if [ -n "${WHISPER_FEATURE_CACHE:-}" ]; then strategy+=(--whisper-feature-cache "$WHISPER_FEATURE_CACHE"); fi
elif [ -n "${WHISPER_FEATURE_CACHE:-}" ]; then
  echo "WHISPER_FEATURE_CACHE is used only while Whisper is frozen: set FREEZE_WHISPER=1 or unset it" >&2; exit 2
fi
if [ "${AUDIO_BUCKET_SECONDS:-0}" != 0 ]; then strategy+=(--audio-bucket-seconds "$AUDIO_BUCKET_SECONDS"); fi
if [ "${USE_MT_TEACHER:-0}" = 1 ]; then
  : "${MT_TEACHER:?set MT_TEACHER to the fine-tuned mBART (finetune_mbart50.sh)}"
  strategy+=(--mt-teacher "$MT_TEACHER" --mt-reg-alpha 0.2)
fi

pretrained=()
if [ -n "${WHISPER:-}" ]; then pretrained+=(--whisper-checkpoint "$WHISPER"); fi
if [ -n "${MBART:-}" ]; then pretrained+=(--mbart-checkpoint "$MBART"); fi
if [ "$ARCH" != whisper_mbart_composite_tiny ] && [ ${#pretrained[@]} -lt 4 ]; then
  echo "set WHISPER and MBART (pretrained checkpoints) for $ARCH" >&2; exit 2
fi

echo "ComSL recipe: world size $world ($NNODES node(s) x $NPROC_PER_NODE process(es)), $BATCH_SIZE utterances" \
     "per process x update_freq $UPDATE_FREQ = $((BATCH_SIZE * world * UPDATE_FREQ)) per update" >&2
if [ "${PREFLIGHT:-0}" = 1 ]; then  # check inputs, time a few steps, estimate (comsl-preflight)
  launch=(comsl-preflight --world-size "$world")
  distributed=()
fi
if [ "${CACHE_FEATURES:-0}" = 1 ]; then  # fill the Whisper feature cache (comsl-cache-features)
  launch=(comsl-cache-features)
  distributed=()
fi
run=(exec)
if [ "${DRY_RUN:-0}" = 1 ]; then run=(printf '%q '); fi  # print the command instead of running it
"${run[@]}" "${launch[@]}" "$DATA" --user-dir "$root/comsl_fairseq" "${distributed[@]}" \
  --task comsl_speech_to_text --config-yaml "${CONFIG_YAML:-config.yaml}" \
  --train-subset "$TRAIN_SUBSET" --valid-subset "$VALID_SUBSET" \
  --arch "$ARCH" "${pretrained[@]}" --dropout 0.1 \
  --criterion comsl_multitask "${strategy[@]}" \
  --optimizer adam_grouped --adam-betas '(0.9, 0.98)' --adam-eps 1e-6 --weight-decay 0.1 \
  --lr "$LR" --lr-scheduler epoch_polynomial_decay --warmup-updates "$WARMUP" --end-learning-rate 1e-7 --power 2 \
  --max-epoch "$MAX_EPOCH" \
  --batch-size "$BATCH_SIZE" --update-freq "$UPDATE_FREQ" --required-batch-size-multiple 1 \
  --save-dir "$SAVE_DIR" --keep-last-epochs "$KEEP_LAST_EPOCHS" \
  --tensorboard-logdir "$TENSORBOARD_DIR" \
  --eval-bleu --eval-bleu-per-language --eval-bleu-every-nth "${EVAL_BLEU_EVERY_NTH:-4}" \
  --best-checkpoint-metric bleu --maximize-best-checkpoint-metric \
  "$@"
