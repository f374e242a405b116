"""Dubbing quality on held-out SynthTalk clips: each clip's video dubbed with the next clip's audio, scored as
`talkstream dub --score` scores it, beside the floor and the ceiling.

    python -m clients.cli data synth --out data/dub-src --clips 80 --seconds 4 --size 128 --format mp4 \\
        --sources espeak --seed 5
    python -m bench.dub_quality --data data/dub-src --pairs 6 --threads 2

Pairs come from the eval split (voices, sentences and identities held out from training). For pair i the
video is eval clip i and the audio eval clip i+1's, whose SynthTalk ground truth gives the true mouth
opening. Rows:
  * the source, not dubbed — its mouth against the new audio: the floor of lip sync;
  * the new audio's own video — another identity speaking it: the ceiling of lip sync;
  * the source re-encoded — h264 once more: what the codec alone changes outside the box;
  * dubbed — `engine.generate.dub` with the shipped demo model (the student), per method and decoder.
Columns: lip-sync r at lag 0 and the lag at the peak (the mouth reader on every frame against the new audio's
true opening); identity (cosine to the video's first frame); outside the box: mean |Δ| per channel against the
source after h264 and the share of pixels within 8 levels; inside it: mean |Δ|, and the box's colour error —
|mean colour in the box − the source's there|, per frame, averaged (an off-colour patch shows here, a moving
mouth barely does).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from engine.data.docs import write_png
from engine.data.synthtalk import SynthTalk
from engine.errors import ImageError
from engine.eval.readers import load_readers
from engine.eval.report import evaluate_video
from engine.generate.avatar import FaceBox, check_face, load_avatar
from engine.generate.dub import DubConfig, SourceVideo, dub, measure_outside, pixel_alpha
from engine.generate.long_video import LongVideoConfig
from engine.generate.mp4 import Mp4Writer

FUSE = LongVideoConfig(method="fuse")
ROWS = {  # --rows name -> (table label, DubConfig)
    "extend-vae": ("dubbed, extend, VAE decoder", DubConfig(decoder="vae")),
    "fuse-vae": ("dubbed, fuse, VAE decoder", DubConfig(video=FUSE, decoder="vae")),
    "extend-tiny": ("dubbed, extend, tiny decoder", DubConfig(decoder="tiny")),
    "fuse-tiny": ("dubbed, fuse, tiny decoder", DubConfig(video=FUSE, decoder="tiny")),
}


def box_colour_error(source: str | Path, video: str | Path, box: FaceBox) -> float:
    """Mean over frames of |mean RGB in the box − the source's|, averaged over the channels (0..255)."""
    errors = []
    for a, b in zip(SourceVideo(source), SourceVideo(video)):
        h, w = b.shape[:2]
        inside = pixel_alpha(box, w, h, 1)[..., 0] > 0
        errors.append(np.abs(a[:h, :w][inside].mean(0) - b[inside].mean(0)).mean())
    return float(np.mean(errors))


def reencode(source: Path, out: Path) -> None:
    frames = np.stack(list(SourceVideo(source)))
    with Mp4Writer(out, fps=25, size=(frames.shape[2], frames.shape[1])) as writer:
        writer.write(frames)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a SynthTalk folder with an eval split (mp4 clips)")
    ap.add_argument("--pairs", type=int, default=6, help="at most this many (the eval split has fewer)")
    ap.add_argument("--rows", default=",".join(ROWS), help="dubbed rows, comma-separated")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None, help="keep the dubbed videos here (default: a temporary folder)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {list(ROWS)}")
    split = SynthTalk(args.data, "eval")
    pairs = min(args.pairs, len(split) - 1)
    avatar, (mouth, identity) = load_avatar(), load_readers()
    out = Path(args.out or tempfile.mkdtemp(prefix="dub-quality-"))
    out.mkdir(parents=True, exist_ok=True)
    table: dict[str, list[dict[str, float]]] = {}
    walls: dict[str, list[float]] = {}

    def add(row: str, video: Path, portrait: Path, audio: Path, source: Path | None, box: FaceBox | None) -> None:
        report = evaluate_video(str(video), str(portrait), str(audio), mouth, identity)
        scores = {"r": report.lip_sync.correlation, "lag": report.lip_sync.lag_ms, "identity": report.identity}
        if source is not None and box is not None:
            m = measure_outside(source, video, box)
            scores |= {"outside": m["outside_mean_abs"], "within": m["outside_within_tolerance"],
                       "inside": m["inside_mean_abs"], "colour": box_colour_error(source, video, box)}
        table.setdefault(row, []).append(scores)

    skipped: list[str] = []
    for i in range(pairs):
        (stem, _), (new, _) = split.rows[i], split.rows[i + 1]
        video, audio = stem.with_suffix(".mp4"), new.with_suffix(".wav")
        portrait = out / f"pair{i}-first.png"
        write_png(portrait, next(iter(SourceVideo(video))))
        box = None
        try:
            check_face(next(iter(SourceVideo(video))), "first frame")
        except ImageError:  # dub would refuse it (asking for --mask-box): counted, not dubbed
            skipped.append(stem.name)
            continue
        for row in rows:
            label, config = ROWS[row]
            dubbed = out / f"pair{i}-{row}.mp4"
            t0 = time.perf_counter()
            result = dub(avatar, video, audio, dubbed, replace(config, seed=i))
            walls.setdefault(label, []).append(time.perf_counter() - t0)
            box = result.box
            add(label, dubbed, portrait, audio, video, box)
        add("the source, not dubbed", video, portrait, audio, None, None)
        add("the new audio's own video (ceiling)", new.with_suffix(".mp4"), portrait, audio, None, None)
        if box is not None:
            again = out / f"pair{i}-reencoded.mp4"
            reencode(video, again)
            add("the source re-encoded (the codec alone)", again, portrait, audio, video, box)
        print(f"pair {i + 1}/{pairs} done", flush=True)

    print(f"\n{pairs - len(skipped)} pairs from the eval split of {args.data} (skipped, no face found in the "
          f"first frame: {skipped or 'none'}); the shipped demo model (the student); "
          f"{torch.get_num_threads()} threads\n")
    print("| row | lip-sync r (lag 0) | lag at peak ms | identity to the first frame | outside the box, mean abs Δ "
          "(% within 8) | inside, mean abs Δ | box colour error | wall s per 4 s clip |")
    print("|---|---|---|---|---|---|---|---|")
    for row, scores in table.items():  # means over the pairs
        mean = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
        cells = [f"{mean['r']:.3f}", f"{mean['lag']:+.0f}", f"{mean['identity']:.3f}"]
        cells += [f"{mean['outside']:.2f} ({100 * mean['within']:.1f} %)", f"{mean['inside']:.1f}",
                  f"{mean['colour']:.2f}"] if "outside" in mean else ["–", "–", "–"]
        cells.append(f"{np.mean(walls[row]):.1f}" if row in walls else "–")
        print(f"| {row} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
