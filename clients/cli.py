"""The `talkstream` command. Each subcommand lives in its own small function; `talkstream -h` lists them."""
from __future__ import annotations

import argparse
import sys
from typing import Callable


def cmd_info(args: argparse.Namespace) -> int:
    """List the model presets with their parameter counts (built on the meta device: nothing is allocated)."""
    import torch

    from engine.models.dit import PRESETS, DiT

    print("DiT presets (audio branch included):")
    for name, cfg in PRESETS.items():
        with torch.device("meta"):
            model = DiT(cfg)
        total = sum(p.numel() for p in model.parameters())
        audio = sum(p.numel() for m in model.audio_branch() for p in m.parameters())
        print(f"  {name:<9} {total / 1e6:>10.1f}M params ({audio / 1e6:.1f}M audio)  dim {cfg.dim}, "
              f"{cfg.num_layers} layers, {cfg.num_heads} heads")
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    """Stream audio through the demo model chunk by chunk, as a live session would: an mp4 with the audio."""
    import time
    from pathlib import Path

    import torch

    from engine.audio.io import load_audio
    from engine.generate.avatar import ASSETS, EMOTIONS, AvatarFiles, load_avatar, load_portrait, shipped_portraits
    from engine.generate.mp4 import Mp4Writer
    from engine.generate.streaming import STUDENT_WINDOW, StreamConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    files = AvatarFiles(**{k: Path(v) for k, v in (("dit", args.checkpoint),) if v})
    avatar = load_avatar(files, seed=args.seed)
    print(f"model: {files.dit if avatar.trained else 'random weights (no trained checkpoint found): speed, not faces'}")
    portrait_path = args.portrait or next(iter(shipped_portraits().values()))
    audio_path = args.audio or ASSETS / "example.wav"
    audio = load_audio(audio_path)
    window = STUDENT_WINDOW if args.window is None else args.window
    gen = avatar.generator(StreamConfig(chunk_frames=args.chunk, window_frames=window, steps=args.steps),
                           decoder=args.decoder, emotion=EMOTIONS.index(args.emotion))
    t0 = time.perf_counter()
    gen.reset(avatar.reference(load_portrait(portrait_path)), seed=args.seed)
    gen.push_audio(audio, 16000)
    first, frames = None, 0
    with Mp4Writer(args.out, fps=25, size=avatar.resolution) as out, torch.no_grad():
        for chunk in gen.flush():
            first = first or time.perf_counter() - t0
            out.write(chunk.frames.numpy(), chunk.audio)
            frames += chunk.num_frames
    compute = time.perf_counter() - t0
    print(f"{portrait_path} speaking {audio_path}: {frames} frames ({frames / 25:.2f} s at 25 fps), {args.steps} steps, "
          f"{args.decoder} decoder -> {args.out}")
    print(f"compute {compute:.2f} s, decode and mp4 included: {frames / compute:.1f} fps "
          f"({frames / 25 / compute:.2f}x real time), first chunk {first * 1000:.0f} ms")
    if args.score:
        return _score(args.out, portrait_path, audio_path)
    return 0


def _score(video: str, portrait, audio) -> int:
    from engine.errors import CheckpointError
    from engine.eval.readers import load_readers
    from engine.eval.report import evaluate_video

    try:
        mouth, identity = load_readers()
    except CheckpointError as e:
        print(f"not scored: {e}")
        return 0
    print("\n".join(evaluate_video(video, str(portrait), str(audio), mouth, identity).lines()))
    return 0


def _stream_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--portrait", help="portrait image (PNG/JPEG/WebP); default: the first shipped portrait")
    p.add_argument("--audio", help="audio file (any format PyAV reads); default: the shipped example")
    p.add_argument("--checkpoint", help="DiT safetensors; default: the shipped demo model")
    p.add_argument("--out", default="talkstream-demo.mp4")
    p.add_argument("--decoder", default="tiny", choices=["vae", "tiny"],
                   help="tiny: the live sessions' decoder, real time on a CPU (default); vae: the quality decoder")
    p.add_argument("--emotion", default="neutral", choices=["neutral", "happy", "sad", "surprised", "angry"])
    p.add_argument("--chunk", type=int, default=1, help="latent frames per chunk")
    p.add_argument("--window", type=int, help="latent frames of history in the KV window (default 2, the student's best)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--score", action=argparse.BooleanOptionalAction, default=True,
                   help="score the result with `talkstream eval` (lip sync, identity)")


RENDER_OPTIONS = {  # option: (type, default); a script's [render] table may set any of them
    "method": (str, "extend"), "model": (str, "student"), "teacher": (str, None), "steps": (int, None),
    "guidance": (float, None), "shift": (float, 5.0), "window": (int, None), "overlap": (int, 2), "chunk": (int, 1),
    "history_sigma": (float, 0.0), "decoder": (str, "tiny"), "emotion": (str, "neutral"), "seed": (int, 0),
    "checkpoint_s": (float, 10.0), "context_shots": (int, 1), "measure_joins": (bool, True),
}


def _render_options(args: argparse.Namespace, script: dict) -> dict:
    """Flags given on the command line, else the script's [render] table, else the defaults."""
    from engine.errors import ConfigError

    unknown = set(script) - set(RENDER_OPTIONS)
    if unknown:
        raise ConfigError(f"the script's [render] table has unknown options {sorted(unknown)}; "
                          f"known: {', '.join(sorted(RENDER_OPTIONS))}")
    options = {}
    for name, (kind, default) in RENDER_OPTIONS.items():
        value = getattr(args, name)
        if value is None and name in script:
            value = script[name]
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                if not (kind is float and isinstance(value, int) and not isinstance(value, bool)):
                    raise ConfigError(f"[render] {name} must be a {kind.__name__}, got {value!r}")
        options[name] = default if value is None else kind(value)
    return options


def load_render_avatar(model: str, teacher: str | None, device: str, seed: int = 0):
    """The shipped demo model; with model "teacher", its DiT replaced by the teacher's weights at `teacher`."""
    from dataclasses import replace
    from pathlib import Path

    from engine.checkpoints.wan import load_dit
    from engine.errors import CheckpointError
    from engine.generate.avatar import load_avatar

    avatar = load_avatar(device=device, seed=seed)
    if model != "teacher":
        return avatar
    if not teacher or not Path(teacher).exists():
        where = f" ({teacher} does not exist)" if teacher else ""
        raise CheckpointError(f"--model teacher needs the teacher's weights, which are not shipped{where}: train "
                              "them with `talkstream train demo-teacher --data DIR --out RUN` and pass "
                              "--teacher RUN/final.safetensors")
    dit = load_dit(teacher, device=device).eval().requires_grad_(False)
    return replace(avatar, model=dit)


def cmd_render(args: argparse.Namespace) -> int:
    """Render a talking-portrait film of any length (or a multi-shot script) to an mp4, resumably."""
    from pathlib import Path

    import torch

    from engine.errors import ConfigError
    from engine.generate.long_video import LongVideoConfig
    from engine.generate.render import RenderConfig, print_progress, render
    from engine.generate.shots import Shot, load_script

    if args.threads:
        torch.set_num_threads(args.threads)
    script: dict = {}
    if args.script:
        if args.portrait or args.audio:
            raise ConfigError("give either --script or --portrait and --audio")
        shots, script = load_script(args.script)
    elif args.portrait and args.audio:
        o = _render_options(args, {})
        shots = [Shot(Path(args.portrait), Path(args.audio), args.start or 0.0, args.end, o["emotion"])]
    else:
        raise ConfigError("render needs --portrait P and --audio A, or --script film.toml")
    o = _render_options(args, script)
    video = LongVideoConfig.for_model(o["model"], method=o["method"], steps=o["steps"], guidance=o["guidance"],
                                      shift=o["shift"], window_frames=o["window"], overlap_frames=o["overlap"],
                                      chunk_frames=o["chunk"], history_sigma=o["history_sigma"])
    config = RenderConfig(video=video, decoder=o["decoder"], seed=o["seed"], checkpoint_s=o["checkpoint_s"],
                          context_shots=o["context_shots"], measure_joins=o["measure_joins"])
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    avatar = load_render_avatar(o["model"], o["teacher"], device)
    result = render(avatar, shots, args.out, config, print_progress, restart=args.restart)
    print(f"{args.out}: " + "\n".join(result.lines()))
    return 0


def _render_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--portrait", help="portrait image (PNG/JPEG/WebP) with a face")
    p.add_argument("--audio", help="audio file of any length (any format PyAV reads)")
    p.add_argument("--start", type=float, help="seconds into the audio to start at (default 0)")
    p.add_argument("--end", type=float, help="seconds into the audio to end at (default: its end)")
    p.add_argument("--script", help="a multi-shot TOML script instead of --portrait/--audio (docs/render.md)")
    p.add_argument("--out", required=True)
    p.add_argument("--method", choices=["extend", "fuse"],
                   help="extend: diffusion-forcing extension (default); fuse: sliding windows fused in their overlap")
    p.add_argument("--model", choices=["student", "teacher"], help="student (default, shipped) or teacher (--teacher)")
    p.add_argument("--teacher", help="the teacher's DiT safetensors (not shipped)")
    p.add_argument("--steps", type=int, help="denoising steps (default: 4 student, 24 teacher)")
    p.add_argument("--guidance", type=float, help="audio CFG scale (default: 1 student, 2 teacher)")
    p.add_argument("--shift", type=float, help="timestep shift of the sigma grid (default 5)")
    p.add_argument("--window", type=int, help="latent frames: the student's KV window (default 2), or a teacher's or "
                   "fused window (default 8)")
    p.add_argument("--overlap", type=int, help="fuse: latent frames windows share; teacher extend: history frames "
                   "(default 2)")
    p.add_argument("--chunk", type=int, help="the student's latent frames per chunk (default 1)")
    p.add_argument("--history-sigma", type=float, help="extend: re-noise the history to this sigma (default 0)")
    p.add_argument("--decoder", choices=["vae", "tiny"],
                   help="tiny (default: the demo student's latents decode better through it, bench/RESULTS.md) or vae")
    p.add_argument("--emotion", choices=["neutral", "happy", "sad", "surprised", "angry"])
    p.add_argument("--seed", type=int)
    p.add_argument("--checkpoint-s", type=float, help="seconds of film between checkpoints (default 10)")
    p.add_argument("--context-shots", type=int, help="multi-shot: earlier shots kept as in-context frames "
                   "(default 1)")
    p.add_argument("--measure-joins", action=argparse.BooleanOptionalAction, default=None,
                   help="measure colour and identity at every join (default on)")
    p.add_argument("--restart", action="store_true", help="discard a half-done render of other inputs at OUT.parts")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when there is one)")


def _box(text: str):
    from engine.errors import ConfigError
    from engine.generate.avatar import FaceBox

    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ConfigError(f"--mask-box takes left,top,right,bottom in fractions of the frame, got {text!r}")
    return FaceBox(*values)


def cmd_dub(args: argparse.Namespace) -> int:
    """Make an existing video speak new audio: regenerate the mouth region (masked latent inpainting)."""
    import tempfile
    from pathlib import Path

    import numpy as np
    import torch

    from engine.data.docs import write_png
    from engine.generate.avatar import DECODERS
    from engine.generate.dub import DubConfig, SourceVideo, dub, measure_outside
    from engine.generate.long_video import LongVideoConfig
    from engine.generate.render import print_progress

    if args.threads:
        torch.set_num_threads(args.threads)
    o = _render_options(args, {})
    video = LongVideoConfig.for_model(o["model"], method=o["method"], steps=o["steps"], guidance=o["guidance"],
                                      shift=o["shift"], window_frames=o["window"], overlap_frames=o["overlap"],
                                      chunk_frames=o["chunk"], history_sigma=o["history_sigma"])
    assert o["decoder"] in DECODERS
    config = DubConfig(video=video, decoder=o["decoder"], seed=o["seed"], emotion=o["emotion"])
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    avatar = load_render_avatar(o["model"], o["teacher"], device)
    result = dub(avatar, args.video, args.audio, args.out, config, _box(args.mask_box) if args.mask_box else None,
                 print_progress)
    print(f"{args.out}: " + "\n".join(result.lines()))
    if not args.score:
        return 0
    m = measure_outside(args.video, args.out, result.box)
    print(f"after h264, against the source: outside the box mean |d| {m['outside_mean_abs']:.2f}/255, "
          f"{100 * m['outside_within_tolerance']:.2f}% of pixels within 8; inside it mean |d| {m['inside_mean_abs']:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        first = next(iter(SourceVideo(args.video)))
        portrait = f"{tmp}/first-frame.png"
        write_png(Path(portrait), np.ascontiguousarray(first[: first.shape[0] // 2 * 2, : first.shape[1] // 2 * 2]))
        print("the dubbed video, for the new audio:")
        _score(args.out, portrait, args.audio)
        print("the source video, for the new audio (what lip sync was before):")
        _score(args.video, portrait, args.audio)
    return 0


def _dub_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--video", required=True, help="the video to dub (any format PyAV reads; a face in it)")
    p.add_argument("--audio", required=True, help="the new audio")
    p.add_argument("--out", required=True)
    p.add_argument("--mask-box", help="left,top,right,bottom in fractions of the frame (default: the lower face "
                   "found in the first frame)")
    for name, kw in (("--method", {"choices": ["extend", "fuse"]}), ("--model", {"choices": ["student", "teacher"]}),
                     ("--teacher", {}), ("--steps", {"type": int}), ("--guidance", {"type": float}),
                     ("--shift", {"type": float}), ("--window", {"type": int}), ("--overlap", {"type": int}),
                     ("--chunk", {"type": int}), ("--history-sigma", {"type": float}),
                     ("--decoder", {"choices": ["vae", "tiny"]}),
                     ("--emotion", {"choices": ["neutral", "happy", "sad", "surprised", "angry"]}),
                     ("--seed", {"type": int})):
        p.add_argument(name, **kw)  # as for render
    p.set_defaults(checkpoint_s=None, context_shots=None, measure_joins=None)
    p.add_argument("--score", action=argparse.BooleanOptionalAction, default=True,
                   help="score with `talkstream eval` (lip sync for the new audio) and the pixels outside the box")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when there is one)")


def cmd_data(args: argparse.Namespace) -> int:
    """SynthTalk: `talkstream data synth --out DIR --clips N --seconds S --size R` writes dataset shards."""
    from engine.data.synth import synthesize_dataset

    written = synthesize_dataset(args.out, args.clips, args.seconds, args.size, seed=args.seed,
                                 eval_fraction=args.eval_fraction, clips_per_shard=args.clips_per_shard,
                                 fmt=args.format, workers=args.workers, sources=tuple(args.sources.split(",")))
    print(f"{written} clips written to {args.out} ({args.clips - written} already there)")
    return 0


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["synth"])
    p.add_argument("--out", required=True)
    p.add_argument("--clips", type=int, default=100)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-fraction", type=float, default=0.1)
    p.add_argument("--clips-per-shard", type=int, default=100)
    p.add_argument("--format", default="mp4", choices=["mp4", "raw"],
                   help="mp4: compact (h264 + wav + npz); raw: uint8 arrays, for the machine that trains")
    p.add_argument("--workers", type=int, default=1, help="processes rendering in parallel (the clips are the same whatever the count)")
    p.add_argument("--sources", default="espeak,flite,real",
                   help="speech sources, comma-separated: espeak (espeak-ng), flite, real (the asterisk "
                        "prompts, aligned); shares 75/10/15%% among those named")


def cmd_eval(args: argparse.Namespace) -> int:
    """Score a talking-portrait video: lip sync, identity similarity to the portrait, drift per minute."""
    from engine.eval.readers import load_readers
    from engine.eval.report import evaluate_video, plot_png

    mouth, identity = load_readers(args.mouth_reader, args.identity)
    report = evaluate_video(args.video, args.portrait, args.audio, mouth, identity, args.truth, args.text)
    print("\n".join(report.lines()))
    if args.plot:
        plot_png(report, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("video")
    p.add_argument("--portrait", required=True, help="the portrait the video should look like")
    p.add_argument("--audio", required=True, help="the audio the video should speak")
    p.add_argument("--truth", help="SynthTalk ground truth (.npz with mouth_open); default: the npz beside the audio")
    p.add_argument("--text", help="the transcript of the audio, aligned to it for the true opening curve")
    p.add_argument("--plot", help="write a PNG of read vs true opening and the identity per minute")
    p.add_argument("--mouth-reader", help="mouth reader weights (default: the shipped ones)")
    p.add_argument("--identity", help="identity embedder weights (default: the shipped ones)")


def cmd_train(args: argparse.Namespace) -> int:
    """Train a DiT stage from a committed preset: `talkstream train demo-teacher --data D --out RUN [--flag v]`."""
    from engine.train.dit import main as train_main

    train_main(args.rest)
    return 0


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("rest", nargs=argparse.REMAINDER, help="PRESET --data D --out RUN [--field value ...]")


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None]]] = {
    "info": (cmd_info, lambda p: None),
    "stream": (cmd_stream, _stream_args),
    "data": (cmd_data, _data_args),
    "train": (cmd_train, _train_args),
    "render": (cmd_render, _render_args),
    "dub": (cmd_dub, _dub_args),
    "eval": (cmd_eval, _eval_args),
    "export": __import__("exporters.cli_export", fromlist=["COMMAND"]).COMMAND,
    "serve": __import__("clients.serve_cli", fromlist=["SERVE"]).SERVE,
    "mic": __import__("clients.serve_cli", fromlist=["MIC"]).MIC,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="talkstream", description="Streaming talking-portrait engine.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (fn, configure) in COMMANDS.items():
        p = sub.add_parser(name, help=(fn.__doc__ or "").split("\n")[0])
        configure(p)
        p.set_defaults(func=fn)
    args = parser.parse_args(argv)
    from engine.errors import EngineError

    try:
        return int(args.func(args))
    except EngineError as e:  # bad input: say what was wrong, no traceback
        print(f"talkstream {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
