"""`talkstream export onnx --out DIR`: write the chunk-step bundle of a preset (exporters.onnx_export), then
stream a few chunks through ONNX Runtime beside eager torch and print how far apart they are.

    talkstream export onnx --out exports/demo                      # demo preset, 128x128, chunk 1, window 2
    talkstream export onnx --out exports/demo --decoders tiny --chunk 1 --window 2 --verify-chunks 12

The bundle holds the weights it was exported from: a session uses it only with the same weights (the
manifest's fingerprints are checked), which for the demo preset without a shipped checkpoint means the
same `--seed`.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command imports torch and the models only when it runs
    from engine.generate.avatar import Avatar
    from exporters.chunk_graph import ChunkShape

log = logging.getLogger(__name__)


def cmd_export(args: argparse.Namespace) -> int:
    """Export the DiT chunk step and the streaming decoders as ONNX (`talkstream export onnx --out DIR`)."""
    import torch

    from engine.generate.avatar import load_avatar
    from engine.generate.streaming import STUDENT_WINDOW
    from exporters.chunk_graph import ChunkShape
    from exporters.onnx_export import DTYPES, export_bundle

    if args.threads:
        torch.set_num_threads(args.threads)
    # The exporter's own passes log every rewrite at INFO; keep the command's output to what it did.
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    avatar = load_avatar(preset=args.preset, resolution=args.resolution, seed=args.seed, dtype=DTYPES[args.dtype])
    stride, resolution = avatar.vae.cfg.spatial_stride, avatar.resolution
    if resolution % (stride * avatar.model.cfg.patch_size[1]):
        print(f"error: resolution {resolution} is not a multiple of {stride * avatar.model.cfg.patch_size[1]}")
        return 2
    side = resolution // stride
    window = STUDENT_WINDOW if args.window is None else args.window
    shape = ChunkShape((side, side), sink_frames=1, chunk_frames=args.chunk, window_frames=window)
    vae = avatar.vae if "vae" in args.decoders else None
    tiny = avatar.tiny if "tiny" in args.decoders else None
    if "tiny" in args.decoders and avatar.tiny is None:
        print(f"note: preset {args.preset!r} has no tiny decoder; exporting without it")
    print(f"model: preset {args.preset!r} ({'trained' if avatar.trained else 'random weights, seed ' + str(args.seed)}), "
          f"{resolution}x{resolution} -> {side}x{side} latents, {args.dtype}; chunk {shape}")
    t0 = time.perf_counter()
    bundle = export_bundle(avatar.model, shape, Path(args.out), vae=vae, tiny=tiny)
    print(f"exported in {time.perf_counter() - t0:.1f} s; onnx.checker passed on every graph:")
    for f in sorted(bundle.root.iterdir()):
        print(f"  {f.name:<22} {f.stat().st_size / 2**20:8.2f} MiB")
    if args.verify_chunks:
        for kind in [None, *(k for k, d in (("vae", vae), ("tiny", tiny)) if d is not None)]:
            worst_latents, worst_ring, worst_frames = verify(bundle.root, avatar, shape, kind, args.verify_chunks)
            frames = "" if kind is None else f", frames differ by at most {worst_frames} of 255"
            print(f"onnxruntime vs torch, {args.verify_chunks} chunks{' + ' + kind + ' decode' if kind else ''}: "
                  f"relative error of the latents {worst_latents:.2e}, of the KV ring {worst_ring:.2e}{frames}")
        if not any(p.abs().sum() for p in avatar.model.head.head.parameters()):
            print("note: this DiT's output head is all zeros (untrained): its latents are the noise whatever the "
                  "graph computes; the KV ring comparison is the informative one")
    return 0


def verify(root: Path, avatar: Avatar, shape: ChunkShape, kind: str | None, chunks: int) -> tuple[float, float, int]:
    """Stream `chunks` chunks (2 steps, random audio tokens and noise) through onnxruntime-cpu and eager torch
    from the same inputs; the worst relative error of the latents and of the KV ring, and the worst frame
    difference."""
    import torch

    from exporters.backends import Backend, OrtBackend, TorchBackend

    model = avatar.model
    decoder = {"vae": avatar.vae, "tiny": avatar.tiny, None: None}[kind]
    eager, ort = TorchBackend(model, shape, decoder), OrtBackend(root, "cpu", kind)
    backends: list[Backend] = [eager, ort]
    p = next(model.parameters())
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(shape.latents(model, shape.sink_frames), generator=g).to(p.dtype)
    for b in backends:
        b.reset(reference)
    worst_latents, worst_ring, worst_frames = 0.0, 0.0, 0
    sigmas = [1.0, 0.5]
    for _ in range(chunks):
        audio = torch.randn(shape.audio(model), generator=g).to(p.dtype)
        noise = [torch.randn(shape.latents(model), generator=g).to(p.dtype) for _ in sigmas]
        want, got = (b.chunk(audio, noise, sigmas) for b in backends)
        worst_latents = max(worst_latents, float((got.latents - want.latents).abs().max() / want.latents.abs().max()))
        ring = ort.rings[0][0]  # the ring the next chunk reads
        worst_ring = max(worst_ring, float((ring - eager.cache.k).abs().max() / eager.cache.k.abs().max()))
        if want.frames is not None and got.frames is not None:
            worst_frames = max(worst_frames, int((got.frames.int() - want.frames.int()).abs().max()))
    return worst_latents, worst_ring, worst_frames


def configure(p: argparse.ArgumentParser) -> None:
    targets = p.add_subparsers(dest="target", required=True, metavar="TARGET")
    onnx = targets.add_parser("onnx", help="the DiT chunk step and the decoders' step as ONNX graphs")
    onnx.add_argument("--out", required=True, help="folder to write the bundle into (created)")
    onnx.add_argument("--preset", default="demo", help="DiT preset when no shipped checkpoint is found")
    onnx.add_argument("--resolution", type=int, default=None,
                      help="square frame size in pixels (default: the preset's own, 128 for the demo)")
    onnx.add_argument("--chunk", type=int, default=1, help="latent frames per chunk")
    onnx.add_argument("--window", type=int,
                      help="latent frames of history in the KV window (default 2: what sessions use unless told otherwise)")
    onnx.add_argument("--decoders", nargs="*", default=["vae", "tiny"], choices=["vae", "tiny"],
                      help="streaming decoders to export (none: latents only)")
    onnx.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    onnx.add_argument("--seed", type=int, default=0, help="seed of random weights when no checkpoint is shipped")
    onnx.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    onnx.add_argument("--verify-chunks", type=int, default=10,
                      help="chunks to stream through onnxruntime beside torch after the export (0: skip)")


COMMAND = (cmd_export, configure)
