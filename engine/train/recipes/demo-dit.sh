#!/usr/bin/env bash
# The demo DiT on one H100, in calls of at most 10 min (what one device call may run), back to back while
# the machine stays warm (/tmp survives between calls then):
#   STAGES="teacher"  then  STAGES="student distill selfforce eval"   (TEACHER=, INIT=, VAE= name weights)
# Each stage is a committed preset of engine/train/dit.py (demo-teacher, demo-student, demo-distill,
# demo-selfforce) with a time budget; the clips are encoded once into /tmp/latents.safetensors and every stage
# reads that cache. Weights leave the machine as fp16 (the shipped format).
. engine/train/recipes/gpu-env.sh
VAE=${VAE:-engine/assets/demo-vae.safetensors}
LATENTS=/tmp/latents.safetensors
t0=$(date +%s)
if [ -z "${SKIP_SYNTH:-}" ]; then
  synth "${CLIPS:-800}" > /tmp/synth.log 2>&1; tail -n 1 /tmp/synth.log >> "$OUT/times.txt"; touch /tmp/synthtalk.done
fi
echo "synth: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/times.txt"
half() { python3 -c "import sys; from engine.checkpoints.io import save_half; save_half(*sys.argv[1:])" "$1" "$2"; }
train() { python3 -m engine.train.dit "$@" --data /tmp/synthtalk --vae "$VAE" --latents "$LATENTS" ${DIT_ARGS:-} >> "$OUT/logs.txt" 2>&1; }
TEACHER=${TEACHER:-/tmp/teacher/final.safetensors}
for stage in ${STAGES:-teacher}; do
  case $stage in
    teacher)   train demo-teacher --out /tmp/teacher ${TEACHER_INIT:+--init "$TEACHER_INIT"} --time-budget-s "${TEACHER_S:-240}"
               half /tmp/teacher/final.safetensors "$OUT/teacher.safetensors" ;;
    student)   train demo-student --out /tmp/student --init "${INIT:-$TEACHER}" --time-budget-s "${STUDENT_S:-120}" ;;
    distill)   train demo-distill --out /tmp/distill --init "${DISTILL_INIT:-/tmp/student/final.safetensors}" --teacher "$TEACHER" \
                 --time-budget-s "${DISTILL_S:-180}"
               half /tmp/distill/final.safetensors "$OUT/distill.safetensors" ;;
    selfforce) train demo-selfforce --out /tmp/selfforce --init /tmp/distill/final.safetensors --teacher "$TEACHER" \
                 --time-budget-s "${SELFFORCE_S:-120}"
               half /tmp/selfforce/final.safetensors "$OUT/selfforce.safetensors" ;;
    eval)      python3 -m engine.eval.heldout --data /tmp/synthtalk --dit "${DIT:-$OUT/selfforce.safetensors}" \
                 --vae "$VAE" --tiny "${TINY:-engine/assets/demo-tiny.safetensors}" --teacher "$TEACHER" \
                 --mouth-reader "${READER:-engine/assets/mouth-reader.safetensors}" \
                 --identity "${IDENTITY:-engine/assets/identity.safetensors}" --clips "${EVAL_CLIPS:-16}" \
                 --steps "${EVAL_STEPS:-4,2,1}" --decoders "${DECODERS:-vae,tiny}" \
                 --out "$OUT/heldout.json" >> "$OUT/logs.txt" 2>&1 ;;
  esac
  echo "$stage: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/times.txt"
done
for r in teacher student distill selfforce; do
  [ -f /tmp/$r/log.jsonl ] && { echo "== $r"; grep audio_gain /tmp/$r/log.jsonl | tail -n 3; tail -n 3 /tmp/$r/log.jsonl; } >> "$OUT/logs.txt"
done; true
