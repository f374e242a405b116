"""`talkstream render` benchmark: speed (film seconds per wall second) of the long-video methods, and for long
films the lip-sync, identity and drift figures per minute of each method side by side.

    python -m bench.render_speed --seconds 20 --threads 2                 # speed: extend and fuse, the student
    python -m bench.render_speed --seconds 10 --teacher T.safetensors     # ... and the teacher rows
    python -m bench.render_speed --minutes 10 --out runs/films            # a 10-minute film per method, scored
    python -m bench.render_speed --minutes 1 --seed 1 --out runs/films-1  # the same film from other noise

The speech is SynthTalk's (espeak-ng sentences with pauses, engine.data.espeak.speak_clip) with its true
mouth-opening curve written beside it, so `talkstream eval` scores lip sync against ground truth. Speed is
end to end: audio read in pieces, generation, decode, join measurement (colour and identity at every join),
h264 segments, checkpoints and the final mux; the shipped demo weights (the teacher rows time whatever
teacher weights are given: timing does not depend on training). Memory: the process's resident set sampled
at every minute of film, to show it stays flat.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from engine.generate.avatar import AvatarFiles, load_avatar, shipped_portraits
from engine.generate.long_video import LongVideoConfig
from engine.generate.render import RenderConfig, render
from engine.generate.shots import Shot, write_wav


def speech(path: Path, seconds: float, seed: int = 0) -> Path:
    """A wav of SynthTalk speech (30 s clips, one voice each) and its .npz of true mouth opening per frame."""
    from engine.data.espeak import Espeak, speak_clip

    if path.exists() and path.with_suffix(".npz").exists():
        return path
    rng, engine = np.random.default_rng(seed), Espeak()
    audio, opening = [], []
    left = seconds
    while left > 0:
        clip = speak_clip(rng, min(30.0, left), split="eval", engine=engine)
        audio.append(clip.audio)
        opening.append(clip.mouth.open)
        left -= 30.0
    write_wav(path, np.concatenate(audio))
    np.savez(path.with_suffix(".npz"), mouth_open=np.concatenate(opening).astype(np.float32))
    return path


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


ROWS = [("extend", "student"), ("fuse", "student"), ("extend", "teacher"), ("fuse", "teacher")]


def config_for(method: str, model: str, args: argparse.Namespace) -> RenderConfig:
    video = LongVideoConfig.for_model(model, method=method, steps=args.teacher_steps if model == "teacher" else None,
                                      history_sigma=args.history_sigma,
                                      **({"window_frames": args.window} if args.window else {}))
    return RenderConfig(video=video, decoder=args.decoder, checkpoint_s=args.checkpoint_s,
                        measure_joins=args.measure_joins, seed=args.seed)


def run(avatar, portrait: Path, audio: Path, out: Path, config: RenderConfig) -> tuple[object, list[float]]:
    memory: list[float] = []

    def progress(done_s: float, total_s: float, wall_s: float, start_s: float) -> None:
        if done_s >= 60 * len(memory):
            memory.append(rss_mib())

    result = render(avatar, [Shot(portrait, audio)], out, config, progress, restart=True)
    return result, memory


def speed(args: argparse.Namespace, avatar, teacher, portrait: Path, audio: Path, folder: Path) -> None:
    print("| method | model | steps | guidance | film s | wall s | x real time | colour ΔE join/within | "
          "identity jump join/within |")
    print("|---|---|---|---|---|---|---|---|---|")
    for method, model in ROWS:
        if (model == "teacher" and teacher is None) or f"{method}-{model}" not in args.rows.split(","):
            continue
        config = config_for(method, model, args)
        who = avatar if model == "student" else replace(avatar, model=teacher)
        result, _ = run(who, portrait, audio, folder / f"{method}-{model}.mp4", config)
        j = result.joins
        colour = f"{j.ratio('lab'):.2f}" if "lab" in j.within else "-"
        jump = f"{j.ratio('identity'):.2f}" if "identity" in j.within else "-"
        print(f"| {method} | {model} | {config.video.steps} | {config.video.guidance:g} | {result.seconds:.1f} | "
              f"{result.wall_s:.1f} | {result.real_time_factor:.2f} | {colour} | {jump} |", flush=True)
    print(f"load average at the end: {open('/proc/loadavg').read().split()[:3]}")


def minutes(args: argparse.Namespace, avatar, portrait: Path, audio: Path, folder: Path) -> None:
    from engine.eval.metrics import lip_sync
    from engine.eval.readers import load_readers
    from engine.eval.report import evaluate_video

    mouth, identity = load_readers()
    reports = {}
    for method in ("extend", "fuse"):
        if f"{method}-student" not in args.rows.split(","):
            continue
        config = config_for(method, "student", args)
        out = folder / f"film-{method}.mp4"
        t0 = time.perf_counter()
        result, memory = run(avatar, portrait, audio, out, config)
        report = evaluate_video(str(out), str(portrait), str(audio), mouth, identity)
        reports[method] = report
        print(f"{method}: {result.seconds / 60:.1f} min in {result.wall_s / 60:.1f} min ({result.real_time_factor:.2f}x "
              f"real time); eval {time.perf_counter() - t0 - result.wall_s:.0f} s; resident MiB at each minute: "
              f"{', '.join(f'{m:.0f}' for m in memory)}")
        print("\n".join("  " + line for line in result.lines()[1:]), flush=True)
    fps = 25
    print("\n| minute | " + " | ".join(f"{m} lip-sync r | {m} identity | {m} identity drift % | {m} colour drift %"
                                     for m in reports) + " |")
    print("|---|" + "---|---|---|---|" * len(reports))
    n = max(len(r.drift) for r in reports.values())
    for i in range(n):
        cells = []
        for r in reports.values():
            a, b = i * 60 * fps, (i + 1) * 60 * fps
            sync = lip_sync(r.read_open[a:b], r.true_open[a:b], fps).correlation if b - a >= 8 else float("nan")
            d = r.drift[i] if i < len(r.drift) else None
            cells.append(f"{sync:.3f} | {d['identity_sim']:.3f} | {d['identity']:+.2f} | {d['colour_mean']:.2f}" if d
                         else "- | - | - | -")
        print(f"| {i} | " + " | ".join(cells) + " |")
    print("| all | " + " | ".join(f"{r.lip_sync.correlation:.3f} | {r.identity:.3f} | - | -" for r in reports.values()) + " |")
    # drift is against the first 10 s: a window with noise of its own (head motion, what is said; --seed changes it)
    print("identity over the first 10 s (the drift baseline): " + ", ".join(
        f"{m} {r.drift[0]['identity_sim'] / (1 + r.drift[0]['identity'] / 100):.3f}" for m, r in reports.items()))
    for m, r in reports.items():
        print(f"{m}: {r.baseline_noise()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="film length of the speed rows")
    ap.add_argument("--minutes", type=float, default=0.0, help="render a film this long per method and score it")
    ap.add_argument("--dit", default=str(AvatarFiles().dit), help="the student DiT (default: the shipped one)")
    ap.add_argument("--tiny", default=str(AvatarFiles().tiny), help="the tiny decoder (default: the shipped one)")
    ap.add_argument("--teacher", help="teacher DiT safetensors: adds the teacher rows to the speed table")
    ap.add_argument("--teacher-steps", type=int, default=24)
    ap.add_argument("--rows", default=",".join(f"{m}-{k}" for m, k in ROWS), help="method-model rows of the speed table")
    ap.add_argument("--history-sigma", type=float, default=0.0)
    ap.add_argument("--window", type=int, default=0, help="latent frames of the student's KV window (0: the default)")
    ap.add_argument("--decoder", default="tiny", choices=["vae", "tiny"])
    ap.add_argument("--checkpoint-s", type=float, default=10.0)
    ap.add_argument("--measure-joins", action=argparse.BooleanOptionalAction, default=True,
                    help="measure colour and identity at every join (the joins columns need it)")
    ap.add_argument("--out", default="runs/render-bench")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0, help="the render's noise seed (the same speech and portrait)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"# device: {name}; torch {torch.__version__}; decoder {args.decoder}; checkpoints every {args.checkpoint_s} s; "
          f"joins measured: {args.measure_joins}; load average {open('/proc/loadavg').read().split()[:3]}")
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    avatar = load_avatar(AvatarFiles(dit=Path(args.dit), tiny=Path(args.tiny)), device=device)
    teacher = None
    if args.teacher:
        from engine.checkpoints.wan import load_dit

        teacher = load_dit(args.teacher, device=device).eval().requires_grad_(False)
    portrait = next(iter(shipped_portraits().values()))
    seconds = args.minutes * 60 if args.minutes else args.seconds
    audio = speech(folder / f"speech-{seconds:.0f}s.wav", seconds)
    if args.minutes:
        minutes(args, avatar, portrait, audio, folder)
    else:
        speed(args, avatar, teacher, portrait, audio, folder)


if __name__ == "__main__":
    main()
