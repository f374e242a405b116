#!/usr/bin/env bash
# Beside the DiT (same call, same GPU, once the clips exist): the demo VAE's decoder fine-tuned with a heavier
# mouth weight (the encoder, so the latent space the DiT learns, stays); then, from the new decoder, the tiny
# decoder distilled and both eval readers retrained to read VAE-decoded frames too. VAE= names the start.
. engine/train/recipes/gpu-env.sh
VAE=${VAE:-engine/assets/demo-vae.safetensors}
while [ ! -f /tmp/synthtalk.done ]; do sleep 2; done
t0=$(date +%s)
python3 -m engine.train.vae --data /tmp/synthtalk --out /tmp/vaeft --init "$VAE" --decoder-only true --steps 100000 \
  --batch 8 --frames 17 --lr 2e-4 --warmup 50 --mouth-weight 16 --face-weight 2 --eval-clips 32 \
  --time-budget-s "${VAE_S:-200}" >> "$OUT/logs.txt" 2>&1
cp /tmp/vaeft/final.safetensors "$OUT/demo-vae.safetensors"
echo "vae decoder: $(( $(date +%s) - t0 )) s" >> "$OUT/times.txt"
python3 -m engine.train.eval_nets --data /tmp/synthtalk --out /tmp/mouth2 --model mouth --steps 6000 --batch 256 \
  --vae /tmp/vaeft/final.safetensors --time-budget-s "${MOUTH_S:-150}" >> "$OUT/logs.txt" 2>&1 &
python3 -m engine.train.eval_nets --data /tmp/synthtalk --out /tmp/identity2 --model identity --steps 6000 --batch 128 \
  --vae /tmp/vaeft/final.safetensors --time-budget-s "${IDENTITY_S:-150}" >> "$OUT/logs.txt" 2>&1 &
python3 -m engine.train.vae --data /tmp/synthtalk --out /tmp/tiny2 --model tiny --teacher /tmp/vaeft/final.safetensors \
  --init "${TINY:-}" --steps 100000 --batch 8 --frames 17 --lr 5e-4 --warmup 50 \
  --mouth-weight 16 --eval-clips 32 --time-budget-s "${TINY_S:-120}" >> "$OUT/logs.txt" 2>&1
wait
echo "finetune: $(( $(date +%s) - t0 )) s" >> "$OUT/times.txt"
cp /tmp/tiny2/final.safetensors "$OUT/demo-tiny.safetensors"
cp /tmp/mouth2/final.safetensors "$OUT/mouth-reader.safetensors"
cp /tmp/identity2/final.safetensors "$OUT/identity.safetensors"
for r in vaeft tiny2 mouth2 identity2; do [ -f /tmp/$r/log.jsonl ] && { echo "== $r"; tail -n 2 /tmp/$r/log.jsonl; } >> "$OUT/logs.txt"; done; true
