# Sourced by the GPU recipes: the GPU machine has Python 3.12 and torch but no network, so the wheels it
# lacks travel in .whl/ (PyAV for audio resampling and video, espeakng-loader for espeak-ng).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null || true
export PYTHONPATH=/tmp/site:$PWD
export OUT=${OUT:-runs/out}
mkdir -p "$OUT"
# SynthTalk, raw, rendered here (16 cores render ~1,000 clips a minute; carrying it would not fit)
synth() {  # synth CLIPS
  python3 -m clients.cli data synth --out /tmp/synthtalk --clips "$1" --seconds 4 --size 256 --format raw --sources espeak \
    --workers "$(( $(nproc) - 1 ))" --seed 0
}
