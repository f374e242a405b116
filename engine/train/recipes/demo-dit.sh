#!/usr/bin/env bash
# The demo DiT on one H100, in two calls of ~10 min (a call may run 10 min at most):
#   STAGES="teacher student"  then  STAGES="distill eval"   (VAE=, INIT=, TEACHER= name carried weights)
# Each stage is a committed preset of engine/train/dit.py (demo-teacher, demo-student, demo-distill) with a
# time budget; weights leave the machine as fp16 (the shipped format).
. engine/train/recipes/gpu-env.sh
VAE=${VAE:-engine/assets/demo-vae.safetensors}
t0=$(date +%s)
[ -n "${SKIP_SYNTH:-}" ] || { synth "${CLIPS:-800}" > /tmp/synth.log 2>&1; tail -n 1 /tmp/synth.log >> "$OUT/times.txt"; }
echo "synth: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/times.txt"
half() { python3 -c "import sys; from engine.checkpoints.io import save_half; save_half(*sys.argv[1:])" "$1" "$2"; }
for stage in ${STAGES:-teacher student}; do
  case $stage in
    teacher) python3 -m engine.train.dit demo-teacher --data /tmp/synthtalk --out /tmp/teacher --vae "$VAE" \
               --time-budget-s "${TEACHER_S:-240}" ${DIT_ARGS:-} >> "$OUT/logs.txt" 2>&1
             half /tmp/teacher/final.safetensors "$OUT/teacher.safetensors"; TEACHER=/tmp/teacher/final.safetensors ;;
    student) python3 -m engine.train.dit demo-student --data /tmp/synthtalk --out /tmp/student --vae "$VAE" \
               --init "${INIT:-/tmp/teacher/final.safetensors}" --time-budget-s "${STUDENT_S:-180}" ${DIT_ARGS:-} >> "$OUT/logs.txt" 2>&1
             half /tmp/student/final.safetensors "$OUT/student.safetensors" ;;
    distill) python3 -m engine.train.dit demo-distill --data /tmp/synthtalk --out /tmp/distill --vae "$VAE" \
               --init "${INIT:-/tmp/student/final.safetensors}" --teacher "$TEACHER" \
               --time-budget-s "${DISTILL_S:-240}" ${DIT_ARGS:-} >> "$OUT/logs.txt" 2>&1
             half /tmp/distill/final.safetensors "$OUT/demo-dit.safetensors" ;;
    eval)    python3 -m engine.eval.heldout --data /tmp/synthtalk --dit "$OUT/demo-dit.safetensors" --vae "$VAE" \
               --teacher "$TEACHER" --mouth-reader "$READER" --identity "$IDENTITY" --clips "${EVAL_CLIPS:-16}" \
               --out "$OUT/heldout.json" >> "$OUT/logs.txt" 2>&1 ;;
  esac
  echo "$stage: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/times.txt"
done
for r in teacher student distill; do [ -f /tmp/$r/log.jsonl ] && { echo "== $r"; tail -n 4 /tmp/$r/log.jsonl; } >> "$OUT/logs.txt"; done; true
