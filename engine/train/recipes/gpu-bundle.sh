#!/usr/bin/env bash
# Run here (not on the GPU machine): the wheels the GPU machine lacks -- onnxruntime-gpu, PyAV, espeakng-loader --
# as one bundle in parts small enough to travel beside the tree, for gpu-env.sh to join and unpack there.
# The wheels' shared libraries compress far better with xz than in their zip: onnxruntime-gpu 255.6 MB -> 204 MB,
# PyAV 35 MB -> 25 MB. Parts of 39,000,000 bytes: the tree (27 MB) + one part stays under a call's 64 MiB.
set -euo pipefail
out=${1:-.ortparts}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 -d "$work/wheels" onnxruntime-gpu av
mkdir -p "$work/bundle"
for whl in "$work"/wheels/*.whl; do
  name=$(basename "$whl" | cut -d- -f1)
  mkdir -p "$work/$name" && (cd "$work/$name" && unzip -q "$whl")
  tar -cf - -C "$work/$name" . | xz -T0 -6 > "$work/bundle/$name.tar.xz"
done
cp .whl/espeakng_loader-*.whl "$work/bundle/"  # repacked with English data only (DEVELOPERS.md)
rm -rf "$out" && mkdir -p "$out"
tar -cf - -C "$work/bundle" . | split -b 39000000 -d - "$out/bundle.tar.part"
ls -l "$out"
