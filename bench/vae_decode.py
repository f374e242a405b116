"""Decode benchmark: ms per video frame of the streaming decoders (causal VAE, tiny decoder), one latent
frame per call in the steady state, random weights with no zeros and random latents.

    python -m bench.vae_decode --threads 2                      # demo presets at 256x256 on the CPU
    python -m bench.vae_decode --vae wan --tiny taew2_1 --resolution 512 --dtype bf16   # on a GPU
"""
from __future__ import annotations

import argparse
import statistics

import torch

from bench.step import DTYPES, Timer, randomised
from engine.models.tiny_vae import MemoryState, TinyVAE, tiny_vae_config
from engine.models.vae import CausalVAE, FeatureCache, vae_config


def bench(model, make_state, stride: int, resolution: int, device, dtype, repeats: int) -> float:
    model = randomised(model).to(device, dtype).eval()
    lat = resolution // stride
    z = torch.randn(1, model.cfg.z_dim, 1, lat, lat, device=device, dtype=dtype)
    state = make_state()
    with torch.no_grad():
        for _ in range(3):  # first frame, then warm-up
            model.decode_chunk(z, state)
        ms = statistics.median(Timer(device)(lambda: model.decode_chunk(z, state), repeats))
    return ms / 4  # 4 video frames per latent frame


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae", default="demo")
    ap.add_argument("--tiny", default="demo")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"# device: {name}; torch {torch.__version__}; dtype {args.dtype}")
    print("| decoder | preset | resolution | params | ms/frame | frames/s |")
    print("|---|---|---|---|---|---|")
    rows = [("causal VAE", args.vae, CausalVAE(vae_config(args.vae)), FeatureCache, vae_config(args.vae).spatial_stride),
            ("tiny", args.tiny, TinyVAE(tiny_vae_config(args.tiny)), MemoryState,
             tiny_vae_config(args.tiny).spatial_stride)]
    for label, preset, model, state, stride in rows:
        params = sum(p.numel() for p in model.decoder.parameters())
        ms = bench(model, state, stride, args.resolution, device, DTYPES[args.dtype], args.repeats)
        print(f"| {label} | {preset} | {args.resolution} | {params / 1e6:.2f}M | {ms:.2f} | {1000 / ms:.0f} |", flush=True)


if __name__ == "__main__":
    main()
