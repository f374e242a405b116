"""SynthTalk throughput on one CPU core: rendered frames per second (render only), and whole clips
(speech + mouth curves + motion + render + mp4/npz writing) per second. Each figure is given by the wall
clock and by the process's CPU time (what one core does when other processes share the machine); a short
render before timing keeps first-call costs out.

    python -m bench.synth_throughput --size 256 --frames 100 --clips 4
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from engine.data.espeak import Espeak
from engine.data.motion import face_state, sample_motion
from engine.data.portrait import Identity, render
from engine.data.synth import make_clip, write_clip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs="+", default=[256, 128])
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--clips", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print("| what | size | frames/s per core (wall clock) | frames/s per core (CPU time) |")
    print("|---|---|---|---|")
    for size in args.size:
        warm = face_state(np.ones(4), np.ones(4), np.ones(4), sample_motion(np.random.default_rng(1), 4, 25,
                                                                             np.ones(4, bool), 0))
        render(Identity.sample(np.random.default_rng(1)), warm, size)
        n, wall, cpu = 0, 0.0, 0.0
        for _ in range(args.clips):
            motion = sample_motion(rng, args.frames, 25, np.ones(args.frames, bool), int(rng.integers(5)))
            state = face_state(rng.random(args.frames), rng.random(args.frames), rng.random(args.frames), motion)
            ident = Identity.sample(rng)
            t, c = time.perf_counter(), time.process_time()
            render(ident, state, size)
            wall, cpu = wall + time.perf_counter() - t, cpu + time.process_time() - c
            n += args.frames
        print(f"| render | {size} | {n / wall:.0f} | {n / cpu:.0f} |", flush=True)
        engine = Espeak()
        n, wall, cpu = 0, 0.0, 0.0
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.clips):
                t, c = time.perf_counter(), time.process_time()
                clip = make_clip(engine, rng, args.frames / 25, size, "train")
                write_clip(clip, Path(tmp) / f"c{i}")
                wall, cpu = wall + time.perf_counter() - t, cpu + time.process_time() - c
                n += args.frames
        print(f"| whole clip (speech, render, mp4+npz) | {size} | {n / wall:.0f} | {n / cpu:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
