#!/usr/bin/env bash
# The shipped tiny decoder of the ninth version: the eighth version's decoder (demo-retrain.sh tiny, on the GPU)
# widened to read the portrait's latent beside each latent frame (preset demo-ref), its first convolution alone
# trained, the rest frozen. It runs on a CPU (no GPU was lent on 2026-12-07): the VAE's latents and decodes of 48
# whole SynthTalk clips are computed once (--teacher-clips; ~21 min at one thread), then 263 steps of batch 1 in
# 30 min at one thread.
#   bash engine/train/recipes/demo-tiny-ref.sh            # -> runs/tiny-ref/final.safetensors, runs/demo-tiny.safetensors
# It started from the eighth version's plain decoder: to repeat it exactly, TINY_INIT=<that file>
# (`git show b0887e6:engine/assets/demo-tiny.safetensors > runs/tiny8.safetensors`); by default a run starts from the
# shipped decoder, which already reads the portrait's latent.
# On the GPU machine the same step runs inside demo-retrain.sh on 600 clips:
#   TINY_ARGS="--preset demo-ref --tiny-layers first" TINY_LR=3e-4 TINY_WARMUP=50 TINY_NOISE=0.3 CLIPS=600 \
#     demo-retrain.sh tiny
set -euo pipefail
DATA=${DATA:-data/train-espeak}; RUN=${RUN:-runs/tiny-ref}
# SynthTalk as the GPU recipe renders it (seed 0: the DiT's own training distribution, not the held-out sets)
talkstream data synth --out "$DATA" --clips 64 --seconds 4 --size 256 --format raw --sources espeak --seed 0 \
  --workers "$(nproc)"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} python -m engine.train.vae --data "$DATA" --out "$RUN" --model tiny \
  --preset demo-ref --tiny-layers first --teacher engine/assets/demo-vae.safetensors \
  --init "${TINY_INIT:-engine/assets/demo-tiny.safetensors}" --teacher-clips 48 --frames 97 --batch 1 --lr 3e-4 \
  --warmup 20 --latent-noise 0.3 --mouth-weight 16 --steps 100000 --time-budget-s "${BUDGET_S:-1800}" --save-every 25 \
  --eval-clips 4 --resolution 128
python -c "import sys; from engine.checkpoints.vae import decoder_only; decoder_only(*sys.argv[1:])" \
  "$RUN/final.safetensors" runs/demo-tiny.safetensors
