#!/usr/bin/env bash
# The demo VAE and its tiny decoder (one H100/H200 call, ~10 min): SynthTalk, the causal VAE at 128x128 on
# whole 4 s clips (97 frames, 25 latent frames), then the tiny decoder distilled from it the same way.
# Whole clips, not short windows: the encoder's receptive field spans ~80 frames, and a VAE trained on
# 17-frame windows (the first recipe) reconstructed a clip's first 17 frames at 28.5 dB and the frames after
# frame 48 at 15 dB -- it had only learnt a receptive field padded with the causal zeros of a clip's start.
# INIT / TINY_INIT start from earlier weights (the shipped ones); DECODER_ONLY=1 fine-tunes INIT's decoder alone
# (the latent space, and the DiT trained on it, stay); the eval reads whole held-out clips and
# reports psnr_start (first 17 frames) beside psnr_late (the rest). $READER reads the mouth on reconstructions.
. engine/train/recipes/gpu-env.sh
t0=$(date +%s)
if [ -z "${SKIP_SYNTH:-}" ]; then
  synth "${CLIPS:-800}" > "$OUT/synth.log" 2>&1; touch /tmp/synthtalk.done
fi
echo "synth: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/times.txt"
python3 -m engine.train.vae --data /tmp/synthtalk --out /tmp/vae --steps 100000 --batch "${BATCH:-4}" \
  --frames "${FRAMES:-97}" --lr "${VAE_LR:-4e-4}" --warmup 200 --mouth-weight "${MOUTH_WEIGHT:-8}" --face-weight 1 \
  --eval-clips 32 --reader "${READER:-}" ${INIT:+--init "$INIT"} ${DECODER_ONLY:+--decoder-only true} --time-budget-s "${VAE_S:-300}" > "$OUT/vae.txt" 2>&1
cp /tmp/vae/final.safetensors "$OUT/demo-vae.safetensors"
echo "vae: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/times.txt"
python3 -m engine.train.vae --data /tmp/synthtalk --out /tmp/tiny --model tiny --teacher /tmp/vae/final.safetensors \
  --steps 100000 --batch "${BATCH:-4}" --frames "${FRAMES:-97}" --lr "${TINY_LR:-1e-3}" --mouth-weight "${MOUTH_WEIGHT:-8}" \
  --eval-clips 32 --reader "${READER:-}" ${TINY_INIT:+--init "$TINY_INIT"} --time-budget-s "${TINY_S:-120}" \
  > "$OUT/tiny.txt" 2>&1
echo "tiny: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/times.txt"
cp /tmp/tiny/final.safetensors "$OUT/demo-tiny.safetensors"
{ tail -n 2 /tmp/vae/log.jsonl; tail -n 2 /tmp/tiny/log.jsonl; } > "$OUT/vae-tiny-log-tail.txt"
