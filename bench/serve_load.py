"""Serving load: per-session fps and audio-in to frame-out latency as concurrent sessions are added.

Each session is a websocket client (clients/sdk.py) that pushes speech-like PCM in 20 ms chunks in real
time, as a microphone would, against an in-process server on loopback. Per session we report the frame
rate received (after a warm-up), the server's audio-in -> first-frame-out latency of each voiced chunk
(p50/p95), the steps the adaptive rule settled on, and the playout underruns; per backend, the most
sessions that all held 25 fps.

    python -m bench.serve_load --sessions 1 2 3 --seconds 15
    python -m bench.serve_load --preset wan-1.3b --device cuda --dtype bf16 --resolution 512 \\
        --backends torch-cudagraph eager --sessions 1 2 3 --seconds 12

A preset other than the demo is built with random weights (seeded; speed only, the faces are noise): its
DiT, Wan's VAE and a tiny decoder of Wan's latent space (taew2_1). The websocket path needs neither
aiortc nor PyAV: portraits and JPEG frames go through Pillow where PyAV is missing (the header says so).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import time

import numpy as np
import torch

from bench.step import randomised
from clients.sdk import AvatarClient
from engine.generate.avatar import Avatar, load_avatar
from engine.models.dit import PRESETS
from realtime.config import SESSION_BACKENDS, ServerConfig, SessionConfig
from realtime.local import serve_local

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
EAGER = "eager"  # the engine's own StreamingGenerator (SessionConfig.backend None)
HOLDS_FPS = 24.5  # a session "holds 25 fps" when its steady rate is at least this


async def one_session(url: str, seconds: float, warmup_s: float) -> dict:
    client = await AvatarClient.connect(url, sample_rate=16000, video="jpeg", live=True)
    frames: list[float] = []
    stats: list[dict] = []

    async def speak() -> None:
        t0, n = time.monotonic(), 0
        rng = np.random.default_rng(0)
        while True:
            await asyncio.sleep(max(0.0, t0 + n * 0.02 - time.monotonic()))
            t = (np.arange(320) + n * 320) / 16000
            envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
            pcm = 0.3 * envelope * np.sin(2 * np.pi * 180 * t) + 0.01 * rng.standard_normal(320)
            await client.send_audio((pcm * 32767).astype(np.int16))
            n += 1

    async def watch() -> None:
        async for _ in client.frames():
            frames.append(time.monotonic())

    async def events() -> None:
        async for event in client.events():
            if event["type"] == "stats":
                stats.append(event)

    start = time.monotonic()
    tasks = [asyncio.create_task(f()) for f in (speak, watch, events)]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.close()
    steady = [t for t in frames if t - start >= warmup_s]
    fps = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 2 else 0.0
    voiced = [s for s in stats if s["latency_ms"] is not None]
    late = voiced[len(stats) // 4:]  # skip the warm-up chunks
    latency = [s["latency_ms"] for s in late]
    return {"fps": fps, "p50": float(np.percentile(latency, 50)) if latency else float("nan"),
            "p95": float(np.percentile(latency, 95)) if latency else float("nan"),
            "steps": sorted({s["steps"] for s in late}), "compute_ms": float(np.median([s["compute_ms"] for s in late]))
            if late else float("nan"), "underruns": stats[-1]["underruns"] if stats else 0,
            "first": voiced[0]["latency_ms"] if voiced else float("nan")}


def build(args: argparse.Namespace) -> Avatar:
    """The demo from its shipped files (random weights if none ship); any other preset with random weights."""
    avatar = load_avatar(device=args.device, dtype=DTYPES[args.dtype], preset=args.preset,
                         resolution=args.resolution)
    if not avatar.trained:  # zero-initialised parts (the DiT's head, its audio output) get values too
        randomised(avatar.model)
        if avatar.tiny is not None:
            randomised(avatar.tiny)  # type: ignore[arg-type]
    if avatar.tiny is None and args.decoder == "tiny":
        raise SystemExit("this avatar has no tiny decoder; use --decoder vae")
    return avatar


def codecs() -> str:
    try:
        import av  # noqa: F401
    except ImportError:
        return "portraits and JPEG through Pillow (no PyAV here)"
    return "portraits and JPEG through PyAV"


def device_name(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()}, {os.cpu_count()} CPU cores"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


async def run(args: argparse.Namespace) -> None:
    t0 = time.monotonic()
    avatar = build(args)  # with every CPU thread: a large preset's random init is seconds per thread
    built_s = time.monotonic() - t0
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    weights = "trained weights" if avatar.trained else "RANDOM weights (speed only; the faces are noise)"
    print(f"device: {device_name(args.device)}, torch {torch.__version__}, {args.dtype}, {args.threads} torch "
          f"thread(s) per op; load average before: {os.getloadavg()[0]:.2f}")
    print(f"{args.preset} preset, {weights}, built in {built_s:.0f} s; {avatar.resolution}x{avatar.resolution}, "
          f"{args.decoder} decoder, steps start at {args.steps} (adaptive), window {args.window}; {codecs()}")
    print(f"backends: {', '.join(args.backends)} ({EAGER}: the engine's StreamingGenerator; the others run the "
          "exporters' chunk step, which has no text branch, so without the emotion condition)")
    print(f"{args.seconds:g} s per row, fps counted after {args.warmup:g} s; a session holds 25 fps at "
          f">= {HOLDS_FPS} fps\n", flush=True)
    gpu = " peak GPU GiB |" if cuda else ""
    print(f"| backend | server warm-up (s) | sessions | fps per session (min / mean) | first chunk latency (ms) | "
          f"latency p50 (ms) | latency p95 (ms) | steps | chunk compute (ms) | underruns |{gpu}")
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|" if cuda else ""))
    held: dict[str, int] = {}
    for backend in args.backends:
        held[backend] = 0
        for n in args.sessions:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            session = SessionConfig(steps=args.steps, decoder=args.decoder, window_frames=args.window,
                                    backend=None if backend == EAGER else backend)
            config = ServerConfig(port=0, max_sessions=n, session=session)
            async with serve_local(avatar, config) as server:  # a named backend is warmed up before it listens
                warm_s = server.state.warm_up_s
                results = await asyncio.gather(*(one_session(server.ws_url, args.seconds, args.warmup)
                                                  for _ in range(n)))
            fps = [r["fps"] for r in results]
            if min(fps) >= HOLDS_FPS:
                held[backend] = max(held[backend], n)
            peak = f" {torch.cuda.max_memory_allocated() / 2**30:.1f} |" if cuda else ""
            print(f"| {backend} | {warm_s:.1f} | {n} | {min(fps):.1f} / {np.mean(fps):.1f} | "
                  f"{max(r['first'] for r in results):.0f} | {np.mean([r['p50'] for r in results]):.0f} | "
                  f"{max(r['p95'] for r in results):.0f} | {sorted({s for r in results for s in r['steps']})} | "
                  f"{np.mean([r['compute_ms'] for r in results]):.0f} | {sum(r['underruns'] for r in results)} |{peak}",
                  flush=True)
            gc.collect()  # the sessions' generators (KV caches, CUDA graphs) go before the next row
            if cuda:
                torch.cuda.empty_cache()
    print()
    for backend, n in held.items():
        print(f"{backend}: {n} concurrent session(s) held 25 fps (of {args.sessions} tried)")
    print(f"load average after: {os.getloadavg()[0]:.2f}; {time.monotonic() - t0:.0f} s in all")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--resolution", type=int, help="default: the model's own (128 for the demo)")
    p.add_argument("--decoder", default="tiny", choices=["tiny", "vae"])
    p.add_argument("--backends", nargs="+", default=[EAGER], choices=[EAGER, *SESSION_BACKENDS],
                   help=f"{EAGER}: the engine's generator; others: the exporters' chunk step (rows per backend)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    if "torch-cudagraph" in args.backends and args.device != "cuda":
        p.error("the torch-cudagraph backend needs --device cuda")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
