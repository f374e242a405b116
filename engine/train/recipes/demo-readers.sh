#!/usr/bin/env bash
# The reading networks of `talkstream eval` (one H100 call, ~5 min): SynthTalk, then the mouth reader and the
# identity embedder in parallel. Outputs land in $OUT. (The first run of this call also trained a x16 demo
# VAE beside them; that preset was replaced, see demo-vae.sh.)
. engine/train/recipes/gpu-env.sh
t0=$(date +%s)
synth "${CLIPS:-800}" > "$OUT/synth.log" 2>&1
echo "synth: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/times.txt"
python3 -m engine.train.eval_nets --data /tmp/synthtalk --out /tmp/mouth --model mouth --steps 6000 \
  --batch 256 --time-budget-s 240 > "$OUT/mouth.txt" 2>&1 &
python3 -m engine.train.eval_nets --data /tmp/synthtalk --out /tmp/identity --model identity --steps 3000 \
  --batch 128 --time-budget-s 240 > "$OUT/identity.txt" 2>&1 &
wait
echo "trained: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/times.txt"
cp /tmp/mouth/final.safetensors "$OUT/mouth-reader.safetensors"
cp /tmp/identity/final.safetensors "$OUT/identity.safetensors"
for r in mouth identity; do tail -n 3 /tmp/$r/log.jsonl > "$OUT/$r-log-tail.txt"; done
