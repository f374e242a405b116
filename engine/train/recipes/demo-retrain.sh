#!/usr/bin/env bash
# The shipped demo DiT and tiny decoder of 2026-12-05, retrained on a new VAE's latents, in three device calls of at
# most 10 min on one H100, back to back while the machine stays warm (/tmp survives between calls then):
#   bash engine/train/recipes/demo-retrain.sh teacher   # SynthTalk 1,200 clips, the latent cache, the teacher
#   bash engine/train/recipes/demo-retrain.sh distill   # few-step distillation from it, then the tiny decoder
#   DISTILL_S=330 bash engine/train/recipes/demo-retrain.sh distill  # again: the distillation resumes where it stopped
# $VAE is the new VAE (demo-vae.sh on whole clips; copy it over engine/assets/demo-vae.safetensors in the working
# copy: a separate file would push a call past what it may carry). The teacher starts from $TEACHER_INIT (the
# previous student: the DiT adapts to a new latent space in a few thousand steps). One job at a time: each loads
# the whole split on the CPU first. Every stage's weights are copied to $OUT as soon as it ends, from
# final.safetensors or, if a timeout cut the stage, from its last checkpoint.
. engine/train/recipes/gpu-env.sh
set +e
t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }
stamp() { echo "$1: $(elapsed) s" | tee -a "$OUT/times.txt"; }
half() { python3 -c "import sys; from engine.checkpoints.io import save_half; save_half(*sys.argv[1:])" "$1" "$2"; }
newest() { [ -f "$1/final.safetensors" ] && echo "$1/final.safetensors" || echo "$1/last.safetensors"; }
VAE=${VAE:-engine/assets/demo-vae.safetensors}
LATENTS=/tmp/latents.safetensors
TEACHER=/tmp/teacher/final.safetensors
READER=engine/assets/mouth-reader.safetensors
ensure_data() {
  if [ ! -f /tmp/synthtalk.done ]; then synth "${CLIPS:-1200}" > "$OUT/synth.log" 2>&1; touch /tmp/synthtalk.done; fi
  stamp synth
  if [ ! -f $LATENTS ]; then
    python3 -c "
import sys; from engine.train.dit import TrainDiTConfig, latent_clips
latent_clips(TrainDiTConfig('teacher', data='/tmp/synthtalk', out='/tmp/x', vae=sys.argv[1], latents=sys.argv[2]), 'cuda')" \
      "$VAE" $LATENTS > "$OUT/latents.txt" 2>&1
  fi
  stamp latents
}
dit() {  # dit LIMIT_S PRESET ARGS...: one stage under a hard limit
  local limit=$1; shift
  timeout "$limit" python3 -m engine.train.dit "$@" --data /tmp/synthtalk --vae "$VAE" --latents $LATENTS >> "$OUT/logs.txt" 2>&1
}
case $1 in
  teacher)
    ensure_data
    budget=$(( ${END_S:-535} - $(elapsed) )); echo "teacher budget $budget s" >> "$OUT/times.txt"
    dit $(( budget + 40 )) demo-teacher --out /tmp/teacher --init "${TEACHER_INIT:-engine/assets/demo-dit.safetensors}" \
      --time-budget-s $budget
    half "$(newest /tmp/teacher)" "$OUT/teacher.safetensors"
    grep audio_gain /tmp/teacher/log.jsonl | tail -n 3 > "$OUT/teacher-log-tail.txt"
    stamp teacher ;;
  distill)
    ensure_data
    dit $(( 575 - $(elapsed) )) demo-distill --out /tmp/distill --init $TEACHER --teacher $TEACHER \
      --time-budget-s "${DISTILL_S:-300}"
    half "$(newest /tmp/distill)" "$OUT/distill.safetensors"
    tail -n 3 /tmp/distill/log.jsonl > "$OUT/distill-log-tail.txt"
    stamp distill
    tiny_s=$(( 500 - $(elapsed) ))
    if [ ! -f /tmp/tiny/final.safetensors ] && [ $tiny_s -ge 60 ]; then
      python3 -m engine.train.vae --data /tmp/synthtalk --out /tmp/tiny --model tiny --teacher "$VAE" --steps 100000 \
        --batch 4 --frames 97 --lr 1e-3 --mouth-weight 8 --eval-clips 32 --reader $READER \
        --init "${TINY_INIT:-engine/assets/demo-tiny.safetensors}" --time-budget-s $tiny_s > "$OUT/tiny.txt" 2>&1
      cp "$(newest /tmp/tiny)" "$OUT/demo-tiny.safetensors"   # ship with engine.checkpoints.vae.decoder_only
      stamp tiny
    fi ;;
  *) echo "usage: demo-retrain.sh teacher|distill" >&2; exit 2 ;;
esac
ls -la "$OUT"
