"""`talkstream serve` (the realtime server) and `talkstream mic` (a microphone client of it)."""
from __future__ import annotations

import argparse


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the avatar over WebRTC (/offer, WHIP), a websocket protocol and a browser page."""
    import asyncio
    import logging

    import torch

    from engine.generate.avatar import ImageLimits, load_avatar
    from realtime.config import ServerConfig, SessionConfig
    from realtime.local import run_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)  # sessions run on their own threads: keep each op's pool small
    avatar = load_avatar(resolution=args.resolution, device=args.device)
    session = SessionConfig(steps=args.steps, adaptive=not args.fixed_steps, decoder=args.decoder,
                            window_frames=SessionConfig.window_frames if args.window is None else args.window,
                            idle_timeout_s=args.idle_timeout, backend=args.backend)
    config = ServerConfig(host=args.host, port=args.port, max_sessions=args.max_sessions, token=args.token,
                          allowed_origins=tuple(args.allowed_origin), resume_grace_s=args.resume_grace,
                          loopback_ice=args.loopback_ice,
                          image_limits=ImageLimits(max_bytes=args.max_image_bytes, max_pixels=args.max_image_pixels),
                          session=session)
    print(f"talkstream serve: http://{args.host}:{args.port}/  ({'trained' if avatar.trained else 'random'} "
          f"weights, {avatar.resolution}x{avatar.resolution}, {args.decoder} decoder, up to {args.max_sessions} "
          f"sessions, {args.threads} torch threads)")
    asyncio.run(run_forever(avatar, config))
    return 0


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-sessions", type=int, default=2)
    p.add_argument("--token", help="require this bearer token on every endpoint")
    p.add_argument("--allowed-origin", action="append", default=[], help="websocket origins allowed (repeat)")
    p.add_argument("--resolution", type=int, help="frame size; default: the model's own (128 for the demo)")
    p.add_argument("--decoder", choices=["tiny", "vae"], default="tiny")
    p.add_argument("--steps", type=int, choices=[4, 2, 1], default=4, help="steps a session starts with")
    p.add_argument("--fixed-steps", action="store_true", help="do not adapt the steps to hold real time")
    p.add_argument("--window", type=int, help="latent frames of history in the KV window (default 2, the student's best)")
    p.add_argument("--backend", help="run each session's chunk step on this exporters backend (torch, "
                   "torch-cudagraph: CUDA graphs, GPU only); default: the engine's eager generator")
    p.add_argument("--threads", type=int, default=1, help="torch threads per op (sessions run in parallel)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--idle-timeout", type=float, default=300.0)
    p.add_argument("--resume-grace", type=float, default=10.0)
    p.add_argument("--max-image-bytes", type=int, default=8 * 1024 * 1024)
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096)
    p.add_argument("--loopback-ice", action="store_true", help="ICE candidates on 127.0.0.1 only")


def cmd_mic(args: argparse.Namespace) -> int:
    """Talk to a running server from this machine's microphone; record the avatar to an mp4."""
    import asyncio

    from clients.mic import MicOptions, run_mic

    options = MicOptions(url=args.url, seconds=args.seconds, out=args.out, play=args.play, portrait=args.portrait,
                         token=args.token, device=args.input_device)
    stats = asyncio.run(run_mic(options))
    print(f"{stats.frames} frames, {stats.audio_s:.1f} s of audio back, {stats.events} events"
          + (f"; video written to {args.out}" if args.out else ""))
    return 0


def _mic_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="ws://127.0.0.1:8080/ws")
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: until Ctrl-C)")
    p.add_argument("--out", help="record the returned video and audio to this mp4")
    p.add_argument("--play", action="store_true", help="play the returned audio on the default output")
    p.add_argument("--portrait")
    p.add_argument("--token")
    p.add_argument("--input-device", help="sounddevice input device (name or index)")


# what clients/cli.py registers: (command, its argument parser set-up)
SERVE = (cmd_serve, _serve_args)
MIC = (cmd_mic, _mic_args)
