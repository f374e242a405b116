"""Step benchmark: ms per streaming chunk of the DiT (denoising steps + the clean pass that writes the KV
cache) for a preset on the current device, with random non-zero weights and inputs (timing does not depend
on the weights' values). Decode is not included; the figure says so.

    python -m bench.step --preset demo --resolution 256 --threads 2
    python -m bench.step --preset wan-1.3b --resolution 512 --chunk 1 --window 12 --steps 4 --dtype bf16

Prints one table row per configuration; `--baseline` also runs the plain-PyTorch ceiling model of
bench/calib_ceiling.py (shared/calib) at the same shape in the same process, for the row beside it.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from engine.models.attention import KVCache
from engine.models.dit import DiT, dit_config

# Spatial compression of the VAE each preset is paired with (the demo VAE compresses 16x, Wan's 8x).
VAE_STRIDE = {"demo": 16, "wan-1.3b": 8, "wan-14b": 8}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def randomised(model: DiT) -> DiT:
    """Zero-initialised parts (head, audio output) get random values so no kernel sees all zeros."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.02)
    return model


class Timer:
    """Wall-clock on the CPU, CUDA events on the GPU; medians of the repeats."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn, repeats: int) -> list[float]:
        times = []
        for _ in range(repeats):
            if self.cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                torch.cuda.synchronize()
                times.append(a.elapsed_time(b))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return times


def bench_chunk(preset: str, resolution: int, chunk: int, window: int, steps: int, dtype: torch.dtype,
                device: torch.device, repeats: int, with_text: bool, graph: bool = False) -> dict[str, float]:
    """Median ms per chunk in the steady state (window full). graph: CUDA-graph replays of one denoising
    pass and one cache-writing pass at fixed positions (the same work as a real chunk; timing only)."""
    cfg = dit_config(preset)
    model = randomised(DiT(cfg)).to(device, dtype).eval()
    lat = resolution // VAE_STRIDE[preset]
    grid = model.token_grid((lat, lat))
    cache = KVCache(model.cache_config(grid, sink_frames=1, window_frames=window), batch=1, device=device,
                    dtype=dtype)
    g = torch.Generator(device=device).manual_seed(0)
    shape = (1, cfg.in_dim, chunk, lat, lat)
    text = model.encode_text(torch.randn(1, 64, cfg.text_dim, device=device, generator=g)) \
        if with_text and cfg.text_dim else None
    audio = model.encode_audio(torch.randn(1, chunk, 1, cfg.audio_in_dim, device=device, generator=g))
    with torch.no_grad():
        model(torch.randn(1, cfg.in_dim, 1, lat, lat, device=device, generator=g), torch.zeros(1, 1, device=device),
              cache.sink(), text_kv=text, sink_frames=1)
        while cache.frames_written < window:  # fill the window: the steady state of a long stream
            model(torch.randn(shape, device=device, generator=g), torch.zeros(1, chunk, device=device),
                  cache.chunk(chunk, write=True), audio=audio, text_kv=text)
            cache.advance(chunk)

        if graph:  # capture one denoising pass and one cache-writing pass; replay them for the chunk
            x = torch.randn(shape, device=device, generator=g)
            t_noisy, t_clean = torch.full((1, chunk), 900.0, device=device), torch.zeros(1, chunk, device=device)
            read, write = cache.chunk(chunk), cache.chunk(chunk, write=True)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    model(x, t_noisy, read, audio=audio, text_kv=text)
                    model(x, t_clean, write, audio=audio, text_kv=text)
            torch.cuda.current_stream().wait_stream(side)
            g_read, g_write = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
            with torch.cuda.graph(g_read):
                model(x, t_noisy, read, audio=audio, text_kv=text)
            with torch.cuda.graph(g_write):
                model(x, t_clean, write, audio=audio, text_kv=text)

        def one_chunk() -> None:
            if graph:
                for _ in range(steps):
                    g_read.replay()
                g_write.replay()
                return
            x = torch.randn(shape, device=device, generator=g)
            for i in range(steps):
                t = torch.full((1, chunk), 1000.0 * (1 - i / steps), device=device)
                v = model(x, t, cache.chunk(chunk), audio=audio, text_kv=text)
                x = x - v * 0.1
            model(x, torch.zeros(1, chunk, device=device), cache.chunk(chunk, write=True), audio=audio,
                  text_kv=text)
            cache.advance(chunk)

        timer = Timer(device)
        timer(one_chunk, 3)  # warm-up
        ms = statistics.median(timer(one_chunk, repeats))
    video_frames = 4 * chunk
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "tokens": grid[0] * grid[1] * chunk, "ms_chunk": ms, "ms_pass": ms / (steps + 1),
            "fps": video_frames / ms * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--chunk", type=int, nargs="+", default=[1])
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 2, 1])
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--no-text", action="store_true", help="skip the text cross-attention")
    ap.add_argument("--graph", action="store_true", help="also time CUDA-graph replays of the passes (CUDA)")
    ap.add_argument("--baseline", action="store_true", help="also time shared/calib's plain model (CUDA)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"# device: {name}; torch {torch.__version__}; dtype {args.dtype}; decode not included")
    print("| preset | res | chunk (latent) | window | steps | mode | params | tokens/chunk | ms/pass | ms/chunk | "
          "fps (DiT) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    modes = ["eager"] + (["graph"] if args.graph and device.type == "cuda" else [])
    for chunk in args.chunk:
        for steps in args.steps:
            for mode in modes:
                r = bench_chunk(args.preset, args.resolution, chunk, args.window, steps, DTYPES[args.dtype], device,
                                args.repeats, not args.no_text, graph=mode == "graph")
                print(f"| {args.preset} | {args.resolution} | {chunk} | {args.window} | {steps} | {mode} "
                      f"| {r['params'] / 1e6:.1f}M | {r['tokens']} | {r['ms_pass']:.2f} | {r['ms_chunk']:.1f} "
                      f"| {r['fps']:.1f} |", flush=True)
    if args.baseline and device.type == "cuda":
        from bench.calib_ceiling import run

        tpf = (args.resolution // VAE_STRIDE[args.preset] // 2) ** 2
        for chunk in args.chunk:
            _, _, res = run(tpf, chunk, args.window + 1 + chunk)  # its window counts the chunk; +1: our sink
            print(f"# baseline (shared/calib plain model, bf16, chunk {chunk}, cache {args.window}+1 frames): "
                  f"eager {res['eager']:.2f} ms/pass, graph {res['graph']:.2f} ms/pass")


if __name__ == "__main__":
    main()
