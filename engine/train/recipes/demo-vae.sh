#!/usr/bin/env bash
# The demo VAE and its tiny decoder (one H100 call, ~10 min): SynthTalk, the causal VAE at 128x128 on 17-frame
# windows (5 latent frames, so the feature cache is exercised past the first groups), then the tiny decoder
# distilled from it. Evaluation reads the mouth on reconstructions with the mouth reader ($READER).
. engine/train/recipes/gpu-env.sh
t0=$(date +%s)
synth "${CLIPS:-800}" > "$OUT/synth.log" 2>&1
echo "synth: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/times.txt"
python3 -m engine.train.vae --data /tmp/synthtalk --out /tmp/vae --steps 100000 --batch 8 --frames 17 \
  --lr 4e-4 --warmup 200 --mouth-weight 8 --face-weight 1 --eval-clips 32 --reader "${READER:-}" \
  --time-budget-s "${VAE_S:-300}" > "$OUT/vae.txt" 2>&1
echo "vae: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/times.txt"
python3 -m engine.train.vae --data /tmp/synthtalk --out /tmp/tiny --model tiny --teacher /tmp/vae/final.safetensors \
  --steps 100000 --batch 8 --frames 17 --lr 1e-3 --mouth-weight 8 --eval-clips 32 --reader "${READER:-}" \
  --time-budget-s "${TINY_S:-120}" > "$OUT/tiny.txt" 2>&1
echo "tiny: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/times.txt"
cp /tmp/vae/final.safetensors "$OUT/demo-vae.safetensors"
cp /tmp/tiny/final.safetensors "$OUT/demo-tiny.safetensors"
{ tail -n 2 /tmp/vae/log.jsonl; tail -n 2 /tmp/tiny/log.jsonl; } > "$OUT/vae-tiny-log-tail.txt"
