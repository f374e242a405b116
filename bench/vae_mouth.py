"""Where a VAE loses the mouth: in space (one frame alone) or in time (4 frames packed into each latent frame).

For held-out SynthTalk clips, the mouth reader's lip-sync r against the true opening curve, for
  * the true frames (the ceiling),
  * the whole clip through encode and decode (what every generated frame is limited by),
  * every frame encoded and decoded on its own (the VAE's spatial loss alone),
and the true curve averaged over each latent frame's 4 video frames, read against itself (how much of the mouth's
motion lies inside one latent frame). On 2026-12-05 the 16-channel VAE read 0.92 one frame at a time and 0.74 on
whole clips, with the averaged curve at 0.85: the loss was temporal, and the fourth demo model has 32 channels.

    python -m bench.vae_mouth --data data/heldout-espeak --clips 8 [--vae engine/assets/demo-vae.safetensors]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from engine.checkpoints.vae import load_vae
from engine.data.synthtalk import SynthTalk
from engine.eval.metrics import lip_sync
from engine.eval.readers import load_readers
from engine.generate.avatar import AvatarFiles, fit_square
from engine.generate.decoders import to_uint8

ROWS = ("true frames", "whole-clip round trip", "one frame at a time", "true curve averaged per latent frame")


def measure(vae, reader, clip, stride: int) -> dict[str, float]:
    frames = torch.from_numpy(np.stack([fit_square(f, 128) for f in clip.frames]))
    t = 1 + (len(frames) - 1) // stride * stride  # the causal VAE's clip lengths: 1 + k·stride
    frames, truth = frames[:t], clip.truth["mouth_open"][:t]
    video = frames.permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    with torch.no_grad():
        whole = to_uint8(vae.decode(vae.encode(video)))
        alone = torch.cat([to_uint8(vae.decode(vae.encode(video[:, :, j:j + 1]))) for j in range(t)])
    averaged = truth.copy()
    for s in range(1, t, stride):
        averaged[s:s + stride] = truth[s:s + stride].mean()
    read = lambda fr: reader.read(fr)[:, 0].numpy()
    return {ROWS[0]: lip_sync(read(frames), truth).correlation,
            ROWS[1]: lip_sync(read(whole), truth).correlation,
            ROWS[2]: lip_sync(read(alone), truth).correlation,
            ROWS[3]: float(np.corrcoef(averaged, truth)[0, 1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a SynthTalk folder; its eval split is read")
    ap.add_argument("--vae", default=str(AvatarFiles().vae))
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    vae = load_vae(args.vae).eval()
    reader, _ = load_readers(None, None, "cpu")
    split = SynthTalk([args.data], "eval")
    rows = {k: [] for k in ROWS}
    for i in range(min(args.clips, len(split))):
        for k, v in measure(vae, reader, split.load(i), vae.cfg.temporal_stride).items():
            rows[k].append(v)
        print(f"clip {i}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in rows.items()), flush=True)
    print(f"# {args.vae}, {len(rows[ROWS[0]])} clips of {args.data}, mouth-reader lip-sync r (lag 0)")
    for k, v in rows.items():
        print(f"{k:<40} {np.mean(v):.3f}")


if __name__ == "__main__":
    main()
