#!/usr/bin/env bash
# Beside the DiT (same call, same GPU): the demo VAE's decoder fine-tuned with a heavier mouth weight (the
# encoder, so the latent space the DiT learns, stays), the tiny decoder distilled from it, and the mouth
# reader retrained to read VAE-decoded frames too. VAE=, READER= name carried weights.
. engine/train/recipes/gpu-env.sh
[ -n "${SKIP_SYNTH:-}" ] || synth "${CLIPS:-800}" > /tmp/synth.log 2>&1
t0=$(date +%s)
python3 -m engine.train.eval_nets --data /tmp/synthtalk --out /tmp/mouth2 --model mouth --steps 6000 --batch 256 \
  --vae "$VAE" --time-budget-s "${MOUTH_S:-200}" >> "$OUT/logs.txt" 2>&1 &
python3 -m engine.train.vae --data /tmp/synthtalk --out /tmp/vaeft --init "$VAE" --decoder-only true --steps 100000 \
  --batch 8 --frames 17 --lr 2e-4 --warmup 50 --mouth-weight 16 --face-weight 2 --eval-clips 32 \
  --time-budget-s "${VAE_S:-260}" >> "$OUT/logs.txt" 2>&1
python3 -m engine.train.vae --data /tmp/synthtalk --out /tmp/tiny2 --model tiny --teacher /tmp/vaeft/final.safetensors \
  --init "${TINY:-}" --steps 100000 --batch 8 --frames 17 --lr 5e-4 --warmup 50 --mouth-weight 16 --eval-clips 32 \
  --time-budget-s "${TINY_S:-100}" >> "$OUT/logs.txt" 2>&1
wait
echo "finetune: $(( $(date +%s) - t0 )) s" >> "$OUT/times.txt"
cp /tmp/vaeft/final.safetensors "$OUT/demo-vae.safetensors"
cp /tmp/tiny2/final.safetensors "$OUT/demo-tiny.safetensors"
cp /tmp/mouth2/final.safetensors "$OUT/mouth-reader.safetensors"
