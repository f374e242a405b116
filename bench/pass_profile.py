"""Where one denoising pass of the streaming step goes, and what compiling and fp8 give: the large preset on
one GPU, random non-zero weights, the window full (the steady state of a stream).

    python -m bench.pass_profile --preset wan-1.3b --resolution 512 --window 12 --variants graph,profile,fp8,compile,compile-fp8

Variants (each timed as a CUDA-graph replay of one pass, CUDA events, median of the repeats after warm-up):
  graph        the pass as the torch-cudagraph backend runs it (exporters.chunk_graph.PassGraph)
  profile      kernel time of eager passes by kind (matmul, attention, copies/concat, elementwise, other)
  fp8          the blocks' large linears in float8 e4m3 (per-token activation and per-channel weight scales,
               torch._scaled_mm); the velocity's relative error against bf16 is printed beside the time
  compile      each block compiled by torch.compile (inductor fuses the float32 norms, modulation, RoPE
               and copies around the matmuls and attention); relative error against the eager pass
  compile-fp8  both
  profile-compile  the kernel profile of the compiled pass
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

from bench.step import VAE_STRIDE, randomised
from engine.models.dit import DiT, dit_config
from exporters.chunk_graph import ChunkShape, PassGraph, rope_tables
from exporters.fp8 import fp8_linears


def inputs(model: DiT, shape: ChunkShape, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    cache = shape.cache_config(model)
    T, L, H, D = cache.tokens_per_frame, cache.num_layers, cache.num_heads, cache.head_dim
    g = torch.Generator(device=device).manual_seed(0)

    def rand(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=g, device=device, dtype=dtype)

    x = rand(*shape.latents(model))
    t = torch.full((1, shape.chunk_frames), 500.0, device=device)
    audio = rand(*shape.audio(model))
    sink = (rand(L, 1, cache.sink_frames * T, H, D), rand(L, 1, cache.sink_frames * T, H, D))
    ring = (rand(L, 1, cache.window_frames * T, H, D), rand(L, 1, cache.window_frames * T, H, D))
    position = torch.tensor(cache.window_frames + 3, device=device)
    tables = rope_tables(cache, shape.chunk_frames, int(position), dtype, device)
    return (x, t, audio, *sink, *ring, position, *tables)


def graph_ms(step: torch.nn.Module, args: tuple[torch.Tensor, ...], repeats: int) -> tuple[float, torch.Tensor]:
    """Capture one pass in a CUDA graph (after warm-up passes on a side stream) and time its replays."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(*args)
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times[repeats // 5:]), out.clone()


KINDS = (("attention", ("flash", "fmha", "cudnn", "attention", "sdpa")),
         ("matmul", ("gemm", "nvjet", "cutlass", "sm90_xmma", "scaled_mm", "f8f8")),
         ("copies/concat", ("cat", "copy", "contiguous", "index", "direct_copy")),
         ("elementwise/norms", ("elementwise", "reduce", "norm", "triton", "mul", "add")))


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def profile(step: torch.nn.Module, args: tuple[torch.Tensor, ...], passes: int = 5) -> list[str]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for _ in range(2):
        step(*args)
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(passes):
            step(*args)
        torch.cuda.synchronize()
    by_kind: dict[str, float] = defaultdict(float)
    top: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)
        if us <= 0 or e.key.startswith("aten::") or e.key.startswith("cuda"):
            continue
        by_kind[kind_of(e.key)] += us / passes / 1e3
        top[e.key] += us / passes / 1e3
    total = sum(by_kind.values())
    lines = [f"kernel time per pass (eager, {passes} passes): {total:.2f} ms"]
    lines += [f"  {k}: {v:.2f} ms ({100 * v / total:.0f}%)" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])]
    lines += ["  top kernels:"] + [f"    {v:7.3f} ms  {k[:110]}" for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:14]]
    return lines


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="wan-1.3b")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=1)
    ap.add_argument("--window", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--variants", default="graph,profile,fp8,compile,compile-fp8")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench.pass_profile measures a GPU pass; no CUDA device here")
    device, dtype = torch.device("cuda"), torch.bfloat16
    torch.manual_seed(0)
    model = randomised(DiT(dit_config(args.preset))).to(device, dtype).eval().requires_grad_(False)
    side = args.resolution // VAE_STRIDE[args.preset]
    shape = ChunkShape((side, side), chunk_frames=args.chunk, window_frames=args.window)
    batch = inputs(model, shape, device, dtype)
    print(f"# {torch.cuda.get_device_name()} · torch {torch.__version__} · {args.preset} {args.resolution}² bf16, "
          f"chunk {args.chunk}, window {args.window} (full), {shape.cache_config(model).tokens_per_frame} tokens/frame")
    variants = args.variants.split(",")
    reference = None
    with torch.no_grad():
        step = PassGraph(model, shape, filled_frames=args.window)
        if "graph" in variants or "fp8" in variants or "compile" in variants:
            ms, reference = graph_ms(step, batch, args.repeats)
            print(f"graph: {ms:.2f} ms/pass", flush=True)
        if "profile" in variants:
            print("\n".join(profile(step, batch)), flush=True)
        if "fp8" in variants:
            restore = fp8_linears(model)
            ms, out = graph_ms(step, batch, args.repeats)
            print(f"fp8: {ms:.2f} ms/pass, relative error against bf16 {rel_err(out, reference):.4f}", flush=True)
            restore()
        if any(v.startswith("compile") or v == "profile-compile" for v in variants):
            torch._dynamo.config.cache_size_limit = 64
            for block in model.blocks:
                block.compile()
            if "compile" in variants:
                t0 = time.perf_counter()
                ms, out = graph_ms(step, batch, args.repeats)
                print(f"compile: {ms:.2f} ms/pass (compile and capture {time.perf_counter() - t0:.0f} s), relative "
                      f"error against eager {rel_err(out, reference):.4f}", flush=True)
            if "profile-compile" in variants:
                print("compiled " + "\n".join(profile(step, batch)), flush=True)
            if "compile-fp8" in variants:
                fp8_linears(model)
                t0 = time.perf_counter()
                ms, out = graph_ms(step, batch, args.repeats)
                print(f"compile-fp8: {ms:.2f} ms/pass (compile and capture {time.perf_counter() - t0:.0f} s), "
                      f"relative error against bf16 eager {rel_err(out, reference):.4f}", flush=True)


if __name__ == "__main__":
    main()
