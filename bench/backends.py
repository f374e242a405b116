"""Backend benchmark: ms per chunk, fps, first-chunk latency and peak memory of every backend, end to end
(audio features → audio tokens → denoising passes → cache write → decode to uint8 frames), through the
engine's StreamingGenerator driven by exporters.stream.BackendGenerator.

    python -m bench.backends --preset demo --resolution 128 --steps 4 2 1 --chunk 1 \
        --backends torch onnxruntime-cpu --decoder tiny --threads 2 --record
    python -m bench.backends --preset wan-1.3b --resolution 512 --steps 4 --chunk 1 --window 12 \
        --backends torch torch-cudagraph --decoder none --dtype bf16 --record

Random non-zero weights (zero-initialised parts get values; timing does not depend on values) and random
non-zero audio. Each row runs in a process of its own, so peak memory is the row's and one backend's
threads cannot slow the next. Per row: one stream warms up (it fills the KV window, and the CUDA-graph
backend captures its graph), then a new stream: its first chunk is the first-chunk latency, and the median
of the chunks after the window is full is the steady state (CUDA events on a GPU, wall clock on a CPU).
ms/chunk and fps include the decode unless --decoder none. On a GPU with the wan-1.3b preset, the plain
PyTorch model of shared/calib (bench/calib_ceiling.py) is timed at the same shape in the same run.
--record appends the table with device, date and command to bench/RESULTS.md (a new section at the end).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


# ----------------------------------------------------------------------------- one row (a process of its own)

def build(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The preset's models with random non-zero weights, on the device, in the dtype."""
    from bench.step import randomised
    from engine.generate.avatar import load_avatar
    from engine.models.tiny_vae import TinyVAE, tiny_vae_config

    avatar = load_avatar(preset=args.preset, resolution=args.resolution, seed=0, dtype=DTYPES[args.dtype])
    tiny = avatar.tiny
    if tiny is None and args.decoder == "tiny":  # the wan presets pair with TAEHV's public layout
        tiny = TinyVAE(tiny_vae_config("taew2_1")).to(DTYPES[args.dtype]).eval().requires_grad_(False)
    decoder = {"none": None, "vae": avatar.vae, "tiny": tiny}[args.decoder]
    device = torch.device(args.device)
    model = randomised(avatar.model).to(device)
    if decoder is not None:
        randomised(decoder).to(device)  # type: ignore[arg-type]
    args.resolution = avatar.resolution  # the preset's own unless one was asked for
    return model, decoder, avatar.vae.cfg.spatial_stride


def bundle_for(args: argparse.Namespace, model, decoder, shape) -> Path:  # type: ignore[no-untyped-def]
    """An exported bundle for these weights and this chunk shape: reused from --onnx-dir when it matches."""
    from exporters.backends import decoder_kind
    from exporters.errors import BackendError
    from exporters.onnx_export import Bundle, export_bundle

    root = Path(args.onnx_dir) / f"{args.preset}-{args.resolution}-c{shape.chunk_frames}-w{shape.window_frames}-" \
                                 f"{args.decoder}-{args.dtype}"
    kind = decoder_kind(decoder)
    try:
        Bundle.load(root).check_matches(model, shape, decoder, kind)
        return root
    except BackendError:
        pass
    model.to("cpu")  # exported from the CPU: the ONNX graphs do not depend on where the weights were
    if decoder is not None:
        decoder.to("cpu")
    export_bundle(model, shape, root, vae=decoder if kind == "vae" else None, tiny=decoder if kind == "tiny" else None)
    for m in (model, decoder):
        if m is not None:
            m.to(args.device)
    return root


def row(args: argparse.Namespace) -> dict:
    """Time one (chunk, steps, backend) on a stream; returns the figures."""
    from engine.audio.features import AudioFeatureConfig
    from engine.generate.streaming import StreamConfig
    from exporters.backends import make_backend
    from exporters.chunk_graph import ChunkShape
    from exporters.stream import BackendGenerator

    if args.threads:
        torch.set_num_threads(args.threads)
    model, decoder, stride = build(args)
    side = args.resolution // stride
    shape = ChunkShape((side, side), 1, args.chunk_size, args.window)
    if args.backend == "onnxruntime-cpu":
        # onnxruntime gets the threads; torch only glues (RoPE tables, the sampler's arithmetic, uint8 frames),
        # and a second thread for such small tensors waits on the other core more than it helps.
        torch.set_num_threads(1)
    onnx_dir = bundle_for(args, model, decoder, shape) if args.backend.startswith("onnxruntime") else None
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    backend = make_backend(args.backend, model, shape, decoder, onnx_dir, threads=args.threads,
                           compile=args.compile_one == "on")
    gen = BackendGenerator(model, backend, StreamConfig(chunk_frames=args.chunk_size, window_frames=args.window,
                                                        steps=args.step_count))
    audio_cfg = AudioFeatureConfig()
    rng = np.random.default_rng(0)
    chunks = args.window // args.chunk_size + args.warmup + args.repeats + 1
    seconds = (chunks * args.chunk_size * audio_cfg.video_frames_per_latent + 8) / audio_cfg.fps
    pcm = (0.3 * rng.standard_normal(int(seconds * audio_cfg.sample_rate))).astype(np.float32)
    reference = torch.randn(shape.latents(model, 1), generator=torch.Generator().manual_seed(0)).to(
        device, DTYPES[args.dtype])

    def timed(fn) -> float:  # type: ignore[no-untyped-def]
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            return a.elapsed_time(b)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    cpu_ms: list[float] = []

    def step() -> None:
        c0 = time.process_time()
        gen.step()
        cpu_ms.append((time.process_time() - c0) * 1e3)

    def stream(count: int) -> list[float]:
        gen.reset(reference, seed=0)
        gen.push_audio(pcm, audio_cfg.sample_rate)
        cpu_ms.clear()
        return [timed(step) for _ in range(count)]

    with torch.no_grad():
        stream(args.window // args.chunk_size + args.warmup)  # warm-up stream (the CUDA graph is captured here)
        times = stream(chunks)
    skip = args.window // args.chunk_size + args.warmup
    steady = times[skip:]
    ms = statistics.median(steady)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    frames = audio_cfg.video_frames_per_latent * args.chunk_size
    return {"resolution": args.resolution, "ms_chunk": ms, "fps": frames / ms * 1e3, "first_ms": times[0], "peak_mib": peak,
            "cpu_ms": statistics.median(cpu_ms[skip:]), "spread": (min(steady), max(steady))}


# ----------------------------------------------------------------------------- the table

def device_name(device: str, threads: int) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), {threads or 'default'} threads"


def baseline(args: argparse.Namespace, chunk: int) -> str:
    """shared/calib's plain-PyTorch 1.3B-shaped model at this shape: eager and graph ms per pass (bf16)."""
    if args.device != "cuda" or args.preset != "wan-1.3b":
        return ""
    from bench.calib_ceiling import run

    tpf = (args.resolution // 8 // 2) ** 2
    _, _, res = run(tpf, chunk, args.window + 1 + chunk)  # its window counts the chunk; +1: our sink
    return (f"Baseline (same run, shared/calib plain model, bf16, DiT only, chunk {chunk}, cache {args.window}+1 "
            f"frames): eager {res['eager']:.2f} ms/pass, CUDA graph {res['graph']:.2f} ms/pass; at 4 steps + the "
            f"cache pass that is {4 * chunk / (5 * res['eager']) * 1e3:.0f} fps eager, "
            f"{4 * chunk / (5 * res['graph']) * 1e3:.0f} fps graphed.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--resolution", type=int, default=None, help="default: the preset's own (128 for the demo)")
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 2, 1])
    ap.add_argument("--chunk", type=int, nargs="+", default=[1])
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--backends", nargs="+", default=None, help="default: every backend that runs here")
    ap.add_argument("--compile", nargs="+", default=["on"], choices=["on", "off"],
                    help="torch-cudagraph rows with the blocks compiled (torch.compile) before capture, without, or both")
    ap.add_argument("--decoder", default="tiny", choices=["tiny", "vae", "none"])
    ap.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: fp32 on a CPU, bf16 on CUDA")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch and onnxruntime (0: default)")
    ap.add_argument("--warmup", type=int, default=3, help="chunks after the window fills before timing")
    ap.add_argument("--repeats", type=int, default=20, help="timed chunks")
    ap.add_argument("--onnx-dir", default=str(Path(tempfile.gettempdir()) / "talkstream-bench-onnx"),
                    help="where exported bundles are kept and reused")
    ap.add_argument("--omp-passive", action="store_true",
                    help="OMP_WAIT_POLICY=PASSIVE for the rows: torch's idle threads sleep instead of spinning "
                         "(onnxruntime's never spin here); on a shared machine spinning threads collapse torch")
    ap.add_argument("--attempts", type=int, default=1,
                    help="runs per row (fresh processes); the lowest median is kept (a shared machine's bursts)")
    ap.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md (or --results)")
    ap.add_argument("--results", default=str(RESULTS), help="the file --record appends to (created if missing)")
    ap.add_argument("--row", action="store_true", help=argparse.SUPPRESS)  # internal: time one row, print JSON
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)  # internal: export a bundle
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--chunk-size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--step-count", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--compile-one", default="on", help=argparse.SUPPRESS)
    ap.add_argument("--device", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    if args.row:
        print("ROW " + json.dumps(row(args)), flush=True)
        return
    if args.prepare:  # export the bundle in a process of its own, so that no row's memory counts the exporter
        model, decoder, stride = build(args)
        from exporters.chunk_graph import ChunkShape

        side = args.resolution // stride
        bundle_for(args, model, decoder, ChunkShape((side, side), 1, args.chunk_size, args.window))
        return

    from exporters.backends import BACKENDS, PREFERENCE

    backends = args.backends or [b for b in BACKENDS if b in PREFERENCE[args.device]]
    command = "python -m bench.backends " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    load = os.getloadavg()
    header = (f"### {datetime.date.today()} · {device_name(args.device, args.threads)} · torch {torch.__version__} · "
              f"{args.dtype}\n\n`{command}`\n")
    lines = [("| preset | res | steps | chunk (latent) | window | backend | decode | ms/chunk | fps | first chunk ms "
              "| CPU ms/chunk | peak MiB |"), "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    print(header)
    print("\n".join(lines), flush=True)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, **({"OMP_WAIT_POLICY": "PASSIVE"} if args.omp_passive else {})}
    for chunk in args.chunk:
        common = ["--chunk-size", str(chunk), "--device", args.device, "--preset", args.preset, "--window",
                  str(args.window), "--decoder", args.decoder, "--dtype", args.dtype, "--threads", str(args.threads),
                  "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--onnx-dir", args.onnx_dir,
                  *(["--resolution", str(args.resolution)] if args.resolution else [])]
        if any(b.startswith("onnxruntime") for b in backends):
            subprocess.run([sys.executable, "-m", "bench.backends", "--prepare", *common], check=False, cwd=root,
                           capture_output=True)
        for steps in args.steps:
            rows = [(b, c) for b in backends for c in (args.compile if b == "torch-cudagraph" else ["-"])]
            for backend, compiled in rows:
                cmd = [sys.executable, "-m", "bench.backends", "--row", "--backend", backend, "--step-count",
                       str(steps), "--compile-one", compiled, *common]
                best, failure = None, "no output"
                for _ in range(args.attempts):  # each in a fresh process; the best median is kept
                    done = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=root, env=env)
                    out = [ln for ln in done.stdout.splitlines() if ln.startswith("ROW ")]
                    if done.returncode or not out:
                        failure = (done.stderr.strip().splitlines() or ["no output"])[-1]
                        break
                    r = json.loads(out[-1][4:])
                    best = r if best is None or r["ms_chunk"] < best["ms_chunk"] else best
                resolution = best["resolution"] if best is not None else args.resolution or "own"
                name = backend + {"on": " (compiled)", "off": " (uncompiled)", "-": ""}[compiled]
                cells = [args.preset, resolution, steps, chunk, args.window, name, args.decoder]
                if best is None:
                    cells += [f"failed: {failure[:120]}", "", "", "", ""]
                else:
                    cells += [f"{best['ms_chunk']:.1f}", f"{best['fps']:.1f}", f"{best['first_ms']:.1f}",
                              f"{best['cpu_ms']:.1f}" if args.device == "cpu" else "-", f"{best['peak_mib']:.0f}"]
                line = "| " + " | ".join(map(str, cells)) + " |"
                lines.append(line)
                print(line, flush=True)
    notes = [(f"Medians of {args.repeats} chunks after the window filled"
              f"{f', the best of {args.attempts} runs (fresh processes)' if args.attempts > 1 else ''}; end to end "
              f"from pushed audio to uint8 frames ("
              f"{'decode included: ' + args.decoder if args.decoder != 'none' else 'decode NOT included'}). "
              f"CPU ms/chunk: process CPU time (all threads) per chunk. onnxruntime-cpu rows give onnxruntime the "
              f"threads and torch's glue one. Peak memory: "
              f"{'torch.cuda.max_memory_allocated' if args.device == 'cuda' else 'peak RSS of the row process'}. "
              f"Load average (1, 5, 15 min) at the start: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}; at the end: "
              f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}.")]
    for chunk in args.chunk:
        if b := baseline(args, chunk):
            notes.append(b)
    print("\n" + "\n".join(notes))
    if args.record:
        results = Path(args.results)
        text = results.read_text() if results.exists() else ""
        section = "## Backends (bench/backends.py): end to end ms per chunk"
        block = f"\n{header}\n" + "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"
        if section not in text:
            block = f"\n{section}\n" + block
        results.write_text(text.rstrip("\n") + "\n" + block)
        print(f"appended to {results}")


if __name__ == "__main__":
    main()
