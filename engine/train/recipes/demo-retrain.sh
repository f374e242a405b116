#!/usr/bin/env bash
# The shipped demo model retrained from the shipped weights, in three device calls of at most 10 min on one H100,
# back to back while the machine stays warm (/tmp survives between calls then; issue the next call at once):
#   bash engine/train/recipes/demo-retrain.sh vae       # SynthTalk 1,200 clips, the VAE on whole clips
#   bash engine/train/recipes/demo-retrain.sh teacher   # the latent cache, then the teacher beside the tiny decoder
#   bash engine/train/recipes/demo-retrain.sh distill   # few-step distillation from the teacher
#   TINY_LR=4e-4 bash engine/train/recipes/demo-retrain.sh tiny  # the tiny decoder alone, from the shipped one
#   TINY_ARGS="--preset demo-ref" TINY_DIR=/tmp/tinyR ... tiny   # TINY_ARGS adds options (here: the decoder that
#     reads the portrait's latent); TINY_DIR names the run folder (default /tmp/tiny), so two can run side by side
#   DISTILL_S=330 bash engine/train/recipes/demo-retrain.sh distill  # again: the distillation resumes where it stopped
#   bash engine/train/recipes/demo-retrain.sh selfforce  # self-forcing from the distilled student (SF_INIT, SF_S, SF_ARGS)
# A stage called again on the warm machine resumes from its last checkpoint in /tmp (the teacher, for a longer run).
# TEACHER_INIT / DISTILL_INIT / TINY_INIT name other starting weights (a carried file); TINY=0 trains the teacher alone.
# DISTILL_ARGS adds options to the distillation (`--lr 2e-4 --seed 1`).
# AUDIO_ENCODER names a pretrained conv audio encoder, carried: the DiT stages switch an init that has the MLP
# projection to it (engine/train/audio_encoder.py; not in the shipped model yet, docs/demo-model.md says why). It is
# pretrained on the CPU machine, whose packages (.ci/run) give the flite voices and the recorded prompts the GPU
# machine lacks (~7 min on 2 cores):
#   python -m engine.train.audio_encoder --out runs/carry/audio-encoder.safetensors --sources espeak,flite,real \
#     --eval-sources espeak,real --match-dit engine/assets/demo-dit.safetensors
# Alone, the teacher runs ~3x faster: 6,300 steps in 446 s on 2026-12-06 against 1,713 in 339 s beside the tiny
# decoder (2026-12-05). The fifth demo model's run (one H100, back to back on one warm machine):
#   TINY=0 END_S=555 demo-retrain.sh teacher
#   TINY_LR=5e-4 TINY_WARMUP=100 END_S=525 demo-retrain.sh tiny &   # beside the next line (not shipped: colour drift)
#   DISTILL_INIT=engine/assets/demo-dit.safetensors DISTILL_S=330 END_S=540 demo-retrain.sh distill; wait
#   DISTILL_S=170 END_S=280 demo-retrain.sh distill                 # resumes
# The sixth demo model's run (one H100, 2026-12-06 night; the encoder pretrained on the CPU machine as above):
#   AUDIO_ENCODER=runs/carry/audio-encoder.safetensors TINY=0 END_S=330 demo-retrain.sh teacher   # 2,719 steps
#   T=/tmp/teacher/final.safetensors                          # then, in the same call, the student from the teacher:
#   TEACHER=$T DISTILL_INIT=$T DISTILL_S=170 END_S=240 demo-retrain.sh distill                     # 714 steps
#   TEACHER=$T DISTILL_S=230 END_S=310 demo-retrain.sh distill       # next call, warm machine: resumes, 1,647 in all
# The seventh demo model's run (one H100, 2026-12-07; two calls on one warm machine):
#   cp <the sixth version's teacher> engine/assets/demo-dit.safetensors   # in the working copy, for call 1 only: a
#   TINY=0 END_S=310 demo-retrain.sh teacher        # carried file would not fit beside the wheels; 1,653 more steps
#   T=/tmp/teacher/final.safetensors                          # then, in the same call, the student from the teacher:
#   TEACHER=$T DISTILL_INIT=$T DISTILL_DIR=/tmp/distillA DISTILL_S=170 END_S=245 demo-retrain.sh distill  # 437 steps
#   TINY_NOISE=0.3 TINY_LR=5e-4 TINY_WARMUP=100 END_S=470 demo-retrain.sh tiny   # call 2, the shipped files restored
# The eighth demo model's run (one H100, 2026-12-07, fourth session; one call; the seventh's teacher was lost, so the
# teacher is rebuilt from the shipped student, the stage's default init):
#   TINY=0 END_S=330 demo-retrain.sh teacher                                                 # 2,854 steps
#   T=/tmp/teacher/final.safetensors                        # then, in the same call, the student at window 2:
#   TEACHER=$T DISTILL_INIT=engine/assets/demo-dit.safetensors DISTILL_DIR=/tmp/distillW DISTILL_S=160 END_S=245 \
#     demo-retrain.sh distill                                 # 674 steps from the seventh student (window 2 = default)
#   DISTILL_DIR=/tmp/distillW SF_S=300 END_S=430 demo-retrain.sh selfforce   # next call, warm machine (not shipped)
# The fifth session's self-forcing runs (2026-12-07; not shipped: docs/demo-model.md, "Self-forcing anchored to the data"):
#   TINY=0 END_S=300 demo-retrain.sh teacher                                       # 3,400 steps from the shipped student
#   SF_INIT=engine/assets/demo-dit.safetensors SF_DIR=/tmp/sfB SF_S=200 END_S=270 SF_ARGS="--data-weight 2" \
#     demo-retrain.sh selfforce   # beside /tmp/sfA (--data-weight 0.5) and /tmp/sfC (--data-weight 2 --teacher-guidance 1.5)
#   the same with SF_S=430 END_S=490 in the next call on the warm machine: each resumes, ~296 steps in all
#   python -m engine.checkpoints.delta unpack runs/carry/teacher-delta.safetensors engine/assets/demo-dit.safetensors $T
#   TEACHER=$T SF_INIT=engine/assets/demo-dit.safetensors SF_DIR=/tmp/sfD SF_S=250 END_S=420 \
#     SF_ARGS="--data-weight 2 --dmd-region face" demo-retrain.sh selfforce        # a later call, alone: 192 steps
# The sixth session's self-forcing runs (2026-12-07; not shipped), the fifth's teacher carried as above, two side by side:
#   TEACHER=$T SF_INIT=engine/assets/demo-dit.safetensors SF_DIR=/tmp/sfE SF_S=380 END_S=560 \
#     SF_ARGS="--data-weight 2 --dmd-region mouth --backdrop-weight 1" demo-retrain.sh selfforce &
#   (the same for /tmp/sfF with "--data-weight 2 --dmd-region face --backdrop-weight 2", started once sfE's log
#   exists, i.e. once sfE has made the clips and the latent cache; END_S counts from each stage's own start, so
#   the later one ran past the call's 600 s: give it END_S smaller by its delay)
#   the same with SF_S=330 END_S=420, then SF_S=270 END_S=300, in the next two calls: ~286, then ~396 steps each
# The seventh session's self-forcing runs (2026-12-07; not shipped), as the sixth's, two side by side (G, then H
# once G's log exists, with that delay taken off H's SF_S and END_S):
#   TEACHER=$T SF_INIT=engine/assets/demo-dit.safetensors SF_DIR=/tmp/sfG SF_S=360 END_S=540 \
#     SF_ARGS="--dmd-weight 0 --data-weight 2 --backdrop-weight 1" demo-retrain.sh selfforce &    # the control
#   ... SF_DIR=/tmp/sfH SF_ARGS="--data-weight 2 --dmd-region mouth --backdrop-weight 1 --rollout-frames 24" ...
#   the same with SF_S=420 END_S=530, then SF_S=330 END_S=430, in the next two calls: G 255 / 509 / 716 steps,
#   H 42 / 116 / 174
# The eighth session got no GPU: the shipped decoder that reads the portrait's latent (ninth version) was trained on
# the CPU by demo-tiny-ref.sh, its first convolution alone. The next GPU run: the whole of it, from the shipped one
# (which already reads the portrait's latent), on 600 clips; judged against the shipped one on the 19 held-out clips:
#   CLIPS=600 TINY_LR=2e-4 TINY_WARMUP=50 TINY_NOISE=0.3 TINY_DIR=/tmp/tinyW TINY_ARGS="--preset demo-ref" \
#     END_S=540 demo-retrain.sh tiny
# The ninth session's self-forcing runs (2026-12-07; not shipped: docs/demo-model.md, "The mouth against the truth"),
# two side by side without a teacher (no DMD), the rollouts' mouth regressed on the true latents at weight 1 and 4
# (MB started once MA's log showed the latent cache, its delay taken off SF_S and END_S):
#   SF_INIT=engine/assets/demo-dit.safetensors TEACHER=engine/assets/demo-dit.safetensors SF_DIR=/tmp/sfMA SF_S=460 \
#     END_S=530 SF_ARGS="--dmd-weight 0 --data-weight 2 --backdrop-weight 1 --mouth-truth-weight 1 --rollout-frames 24" \
#     demo-retrain.sh selfforce &        # and /tmp/sfMB with --mouth-truth-weight 4
#   the same with SF_S=370 END_S=440 in the next call on the warm machine: MA 145 steps, MB 168
# The tenth session's plan (2026-12-08; no machine was lent, nothing ran): call 1, the teacher beside the tiny decoder
# with the mouth L1 on the true frames (600 clips); call 2 on the warm machine, HS: H's options with the rollouts'
# mouth held to the truth in quiet frames (--silence-weight; the latent cache keeps SynthTalk's quiet labels):
#   TINY_DIR=/tmp/tinyW TINY_LR=2e-4 TINY_WARMUP=50 TINY_NOISE=0.3 TINY_S=260 END_S=540 \
#     TINY_ARGS="--preset demo-ref --mouth-truth-weight 1 --max-clips 600" demo-retrain.sh teacher
#   TEACHER=/tmp/teacher/final.safetensors SF_INIT=engine/assets/demo-dit.safetensors SF_DIR=/tmp/sfHS SF_S=450 \
#     END_S=560 SF_ARGS="--data-weight 2 --dmd-region mouth --backdrop-weight 1 --rollout-frames 24 --silence-weight 4" \
#     demo-retrain.sh selfforce           # again with SF_S=450 in a third call: H needed ~170 steps to show its gain
# Each stage starts from the shipped weights of its model. Where the VAE preset has more latent channels than the
# shipped VAE (2026-12-05: 16 -> 32), the trainers widen the shipped weights first (engine/train/widen.py): the
# VAE, the teacher (from the shipped student) and the tiny decoder all start from what already works.
# $VAE is the VAE the DiT stages use: the one the `vae` stage left in /tmp, or a file named in the call (copy it
# over engine/assets/demo-vae.safetensors in the working copy: a separate file may push a call past what it may
# carry). Only one job loads the whole split at a time. Every stage's weights go to $OUT as soon as it ends, from
# final.safetensors or, if a timeout cut the stage, from its last checkpoint.
. engine/train/recipes/gpu-env.sh
set +e
t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }
stamp() { echo "$1: $(elapsed) s" | tee -a "$OUT/times.txt"; }
half() { python3 -c "import sys; from engine.checkpoints.io import save_half; save_half(*sys.argv[1:])" "$1" "$2"; }
newest() {  # a stage's final weights or, if a timeout cut it, its last checkpoint: the newer of the two, since a
  # resumed stage that a timeout cuts leaves the previous call's final.safetensors behind
  local f; f=$(ls -t "$1/final.safetensors" "$1/last.safetensors" 2>/dev/null | head -n 1)
  if [ -n "$f" ]; then echo "$f"; return; fi
  echo "no checkpoint in $1: the stage stopped before its first save (see its log in \$OUT)" >&2; echo /nonexistent
}
VAE=${VAE:-$( [ -f /tmp/vae/final.safetensors ] && echo /tmp/vae/final.safetensors || echo engine/assets/demo-vae.safetensors )}
LATENTS=/tmp/latents.safetensors
TEACHER=${TEACHER:-/tmp/teacher/final.safetensors}
READER=engine/assets/mouth-reader.safetensors
ensure_synth() {
  if [ ! -f /tmp/synthtalk.done ]; then synth "${CLIPS:-1200}" > "$OUT/synth.log" 2>&1; touch /tmp/synthtalk.done; fi
  stamp synth
}
ensure_latents() {
  if [ ! -f $LATENTS ]; then
    python3 -c "
import sys; from engine.train.dit import TrainDiTConfig, latent_clips
latent_clips(TrainDiTConfig('teacher', data='/tmp/synthtalk', out='/tmp/x', vae=sys.argv[1], latents=sys.argv[2]), 'cuda')" \
      "$VAE" $LATENTS > "$OUT/latents.txt" 2>&1
  fi
  stamp latents
}
tiny() {  # tiny LIMIT_S BUDGET_S: the tiny decoder distilled from $VAE into $TINY_DIR (default /tmp/tiny); decoder only
  local run=${TINY_DIR:-/tmp/tiny}; local name; name=$(basename "$run")
  timeout "$1" python3 -m engine.train.vae --data /tmp/synthtalk --out "$run" --model tiny \
    --teacher "$VAE" --steps 100000 --batch 4 --frames 97 --lr "${TINY_LR:-1e-3}" --warmup "${TINY_WARMUP:-200}" \
    --mouth-weight "${MOUTH_WEIGHT:-16}" --latent-noise "${TINY_NOISE:-0}" --eval-clips 32 --reader $READER \
    --init "${TINY_INIT:-engine/assets/demo-tiny.safetensors}" --time-budget-s "$2" ${TINY_ARGS:-} > "$OUT/$name.txt" 2>&1
  python3 -c "import sys; from engine.checkpoints.vae import decoder_only; decoder_only(*sys.argv[1:])" \
    "$(newest "$run")" "$OUT/demo-$name.safetensors"
  tail -n 2 "$run/log.jsonl" > "$OUT/$name-log-tail.txt"
  stamp "$name"
}
dit() {  # dit LIMIT_S PRESET ARGS...: one stage under a hard limit
  local limit=$1; shift
  timeout "$limit" python3 -m engine.train.dit "$@" --data /tmp/synthtalk --vae "$VAE" --latents $LATENTS \
    ${AUDIO_ENCODER:+--audio-encoder "$AUDIO_ENCODER"} >> "$OUT/logs.txt" 2>&1
}
case $1 in
  vae)
    ensure_synth
    budget=$(( ${END_S:-540} - 170 - $(elapsed) )); echo "vae budget $budget s" >> "$OUT/times.txt"
    timeout $(( budget + 150 )) python3 -m engine.train.vae --data /tmp/synthtalk --out /tmp/vae --steps 100000 \
      --batch 4 --frames 97 --lr 4e-4 --warmup 200 --mouth-weight "${MOUTH_WEIGHT:-16}" --face-weight 1 --eval-clips 32 \
      --reader $READER --init "${VAE_INIT:-engine/assets/demo-vae.safetensors}" --time-budget-s $budget > "$OUT/vae.txt" 2>&1
    half "$(newest /tmp/vae)" "$OUT/demo-vae.safetensors"
    tail -n 2 /tmp/vae/log.jsonl > "$OUT/vae-log-tail.txt"
    stamp vae ;;
  teacher)
    ensure_synth
    ensure_latents
    budget=$(( ${END_S:-560} - $(elapsed) )); echo "teacher budget $budget s" >> "$OUT/times.txt"
    dit $(( budget + 30 )) demo-teacher --out /tmp/teacher --init "${TEACHER_INIT:-engine/assets/demo-dit.safetensors}" \
      --time-budget-s $budget &
    teacher_pid=$!
    # beside the teacher: the GPU has room for both small models. Loading the split and the final evaluation take
    # ~180 s around the training budget (on 2026-12-05 a budget 90 s short of that cut it before its final save)
    if [ "${TINY:-1}" = 1 ] && [ ! -f "${TINY_DIR:-/tmp/tiny}/final.safetensors" ]; then  # TINY=0: the teacher alone
      tiny $(( budget + 20 )) "${TINY_S:-$(( budget - 180 ))}"
    fi
    wait $teacher_pid
    half "$(newest /tmp/teacher)" "$OUT/teacher.safetensors"
    grep audio_gain /tmp/teacher/log.jsonl | tail -n 3 > "$OUT/teacher-log-tail.txt"
    stamp teacher ;;
  tiny)  # the tiny decoder alone, from the shipped one (a longer run than the teacher stage leaves it)
    ensure_synth
    budget=$(( ${END_S:-560} - 150 - $(elapsed) )); echo "tiny budget $budget s" >> "$OUT/times.txt"
    tiny $(( budget + 130 )) $budget ;;
  distill)  # DISTILL_DIR names the run folder (default /tmp/distill): two distillations can run side by side
    ensure_synth
    ensure_latents
    run=${DISTILL_DIR:-/tmp/distill}; name=$(basename "$run")
    dit $(( ${END_S:-560} - $(elapsed) )) demo-distill --out "$run" --init "${DISTILL_INIT:-$TEACHER}" --teacher $TEACHER \
      --time-budget-s "${DISTILL_S:-360}" --save-every 100 ${DISTILL_ARGS:-}  # a timeout loses at most 100 steps
    half "$(newest "$run")" "$OUT/$name.safetensors"
    tail -n 3 "$run/log.jsonl" > "$OUT/$name-log-tail.txt"
    stamp "$name" ;;
  selfforce)  # self-forcing: DMD on the student's own rollouts through the KV cache, from the distilled student
    ensure_synth
    ensure_latents
    run=${SF_DIR:-/tmp/selfforce}; name=$(basename "$run")
    dit $(( ${END_S:-560} - $(elapsed) )) demo-selfforce --out "$run" --init "${SF_INIT:-$(newest "${DISTILL_DIR:-/tmp/distill}")}" \
      --teacher $TEACHER --time-budget-s "${SF_S:-360}" --save-every 50 --log-every 10 ${SF_ARGS:-}
    half "$(newest "$run")" "$OUT/$name.safetensors"
    tail -n 3 "$run/log.jsonl" > "$OUT/$name-log-tail.txt"
    stamp "$name" ;;
  *) echo "usage: demo-retrain.sh vae|teacher|tiny|distill|selfforce" >&2; exit 2 ;;
esac
ls -la "$OUT"
