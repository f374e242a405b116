"""Serving load: per-session fps and audio-in to frame-out latency as concurrent sessions are added.

Each session is a websocket client (clients/sdk.py) that pushes speech-like PCM in 20 ms chunks in real
time, as a microphone would, against an in-process server on loopback. Per session we report the frame
rate received (after a warm-up), the server's audio-in -> first-frame-out latency of each voiced chunk
(p50/p95), the steps the adaptive rule settled on, and the playout underruns.

    python -m bench.serve_load --sessions 1 2 3 --seconds 15
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time

import numpy as np
import torch

from clients.sdk import AvatarClient
from engine.generate.avatar import load_avatar
from realtime.config import ServerConfig, SessionConfig
from realtime.local import serve_local


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
    late = [s for s in stats if s["latency_ms"] is not None][len(stats) // 4:]  # skip the warm-up chunks
    latency = [s["latency_ms"] for s in late]
    return {"fps": fps, "p50": float(np.percentile(latency, 50)) if latency else float("nan"),
            "p95": float(np.percentile(latency, 95)) if latency else float("nan"),
            "steps": sorted({s["steps"] for s in late}), "compute_ms": float(np.median([s["compute_ms"] for s in late]))
            if late else float("nan"), "underruns": stats[-1]["underruns"] if stats else 0}


async def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    avatar = load_avatar(resolution=args.resolution)
    print(f"device: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {args.threads} thread(s) per op; load average before: {os.getloadavg()[0]:.2f}")
    print(f"demo preset ({'trained' if avatar.trained else 'random weights'}), {avatar.resolution}x{avatar.resolution}, "
          f"{args.decoder} decoder, steps start at {args.steps} (adaptive), window {args.window}")
    print("| sessions | fps per session (min / mean) | latency p50 (ms) | latency p95 (ms) | steps | "
          "chunk compute (ms) | underruns |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sessions:
        session = SessionConfig(steps=args.steps, decoder=args.decoder, window_frames=args.window)
        config = ServerConfig(port=0, max_sessions=n, session=session)
        async with serve_local(avatar, config) as server:
            results = await asyncio.gather(*(one_session(server.ws_url, args.seconds, args.warmup)
                                              for _ in range(n)))
        fps = [r["fps"] for r in results]
        print(f"| {n} | {min(fps):.1f} / {np.mean(fps):.1f} | {np.mean([r['p50'] for r in results]):.0f} | "
              f"{max(r['p95'] for r in results):.0f} | {sorted({s for r in results for s in r['steps']})} | "
              f"{np.mean([r['compute_ms'] for r in results]):.0f} | {sum(r['underruns'] for r in results)} |",
              flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--resolution", type=int, help="default: the model's own (128 for the demo)")
    p.add_argument("--decoder", default="tiny")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
