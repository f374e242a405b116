# Sourced by the GPU recipes: the GPU machine has Python 3.12 and torch but no network, so the wheels it
# lacks travel in .whl/ (PyAV for audio resampling and video, espeakng-loader for espeak-ng).
# Or they came as a bundle in parts (DEVELOPERS.md: onnxruntime-gpu, PyAV, espeakng-loader), copied to /tmp/parts by
# the calls before this one: joined and unpacked once into /tmp/site.
set -euo pipefail
if ls /tmp/parts/bundle.tar.part* >/dev/null 2>&1 && [ ! -f /tmp/site/.bundle ]; then
  mkdir -p /tmp/bundle /tmp/site
  cat /tmp/parts/bundle.tar.part* | tar -xf - -C /tmp/bundle
  for a in /tmp/bundle/*.tar.xz; do python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall('/tmp/site')" "$a"; done
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/bundle/*.whl
  touch /tmp/site/.bundle
fi
if ls .whl/*.whl >/dev/null 2>&1 && [ ! -d /tmp/site/av ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null || true
fi
export PYTHONPATH=/tmp/site:$PWD
export OUT=${OUT:-runs/out}
mkdir -p "$OUT"
# SynthTalk, raw, rendered here (16 cores render ~1,000 clips a minute; carrying it would not fit)
synth() {  # synth CLIPS
  python3 -m clients.cli data synth --out /tmp/synthtalk --clips "$1" --seconds 4 --size 256 --format raw --sources espeak \
    --workers "$(( $(nproc) - 1 ))" --seed 0
}
