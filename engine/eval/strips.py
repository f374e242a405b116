"""Contact sheets of held-out clips: what a score says is lost, shown. For each clip, three rows of frames evenly
spaced over it: the true frames, the student's (streamed chunk by chunk as sessions stream, from the clip's first
frame and its audio) and their absolute difference, brightened. A backdrop that drifts from the portrait shows as
colour in the difference row away from the face; a mouth out of step, as the mouth alone.

    python -m engine.eval.strips --data DIR --clips 9,15 [--dit W] [--steps 4] [--frames 6] --out sheet.png

It pairs with `engine.eval.heldout --identity-halves`, which reads the same loss as numbers (`identity_backdrop`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.data.docs import write_png
from engine.data.synthtalk import ClipArrays, SynthTalk
from engine.errors import DataError
from engine.eval.heldout import student_frames
from engine.generate.avatar import Avatar, AvatarFiles, fit_square, load_avatar


def sheet_rows(truth: np.ndarray, student: np.ndarray, frames: int, gain: float = 3.0) -> np.ndarray:
    """uint8 [T, S, S, 3] true and student frames -> one image [3·S, frames·S, 3]: truth, student and
    |student − truth| × gain, at `frames` times evenly spaced over the shorter of the two."""
    t = min(len(truth), len(student))
    if t == 0 or frames < 1:
        raise DataError("a contact sheet needs at least one frame of each and frames >= 1")
    picks = np.linspace(0, t - 1, min(frames, t)).round().astype(int)
    diff = np.clip(np.abs(student[picks].astype(np.int16) - truth[picks]) * gain, 0, 255).astype(np.uint8)
    rows = [truth[picks], student[picks], diff]
    return np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)


def clip_rows(avatar: Avatar, clip: ClipArrays, steps: int, seed: int, decoder: str, frames: int) -> np.ndarray:
    """The three rows of one clip, its first frame as the portrait."""
    res = avatar.resolution
    portrait = fit_square(clip.frames[0], res)
    truth = np.stack([fit_square(f, res) for f in clip.frames])
    student = student_frames(avatar, portrait, clip, steps, seed, decoder).numpy()
    return sheet_rows(truth, student, frames)


def contact_sheet(data: str, files: AvatarFiles, clips: list[int], steps: int = 4, decoder: str = "tiny",
                  frames: int = 6, split: str = "eval") -> np.ndarray:
    """The rows of each of `clips` (indices into the split, as `engine.eval.heldout` numbers them), stacked."""
    dataset = SynthTalk(data, split)
    if not clips or max(clips) >= len(dataset) or min(clips) < 0:
        raise DataError(f"clips {clips} are not all in the {split} split of {data} ({len(dataset)} clips: 0 to "
                        f"{len(dataset) - 1})")
    avatar = load_avatar(files, device="cpu")
    with torch.no_grad():
        return np.concatenate([clip_rows(avatar, dataset.load(i), steps, i, decoder, frames) for i in clips], axis=0)


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--clips", required=True, help="comma-separated clip indices of the split, e.g. 9,15")
    ap.add_argument("--dit", default=str(AvatarFiles().dit))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--decoder", default="tiny", choices=("tiny", "vae"))
    ap.add_argument("--frames", type=int, default=6, help="frames per row, evenly spaced over each clip")
    ap.add_argument("--split", default="eval", choices=("eval", "train"))
    ap.add_argument("--out", required=True, help="the PNG to write")
    args = ap.parse_args(argv)
    try:
        clips = [int(c) for c in args.clips.split(",")]
    except ValueError:
        raise SystemExit(f"--clips takes comma-separated integers, not {args.clips!r}") from None
    sheet = contact_sheet(args.data, AvatarFiles(dit=Path(args.dit)), clips, args.steps, args.decoder, args.frames,
                          args.split)
    write_png(Path(args.out), sheet)
    print(f"wrote {args.out}: {len(clips)} clips, {sheet.shape[1]}x{sheet.shape[0]}")


if __name__ == "__main__":
    main()
