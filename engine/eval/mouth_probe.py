"""How much of each video frame's mouth do the VAE's latents hold? A probe reads it back from them.

A latent frame of the demo VAE covers 4 video frames. Holding one mouth state per latent caps lip sync (the true
opening held over each latent's frames reads r 0.85 against itself on the held-out clips), and the VAE's round trip
reads r 0.79. Whether the rest is lost in the latent or in the decoders decides where to work: a probe that reads
the per-frame opening from the latents better than the round trips do says the decoders leave it unshown.

The method, for every latent frame j ≥ 1 of a clip encoded whole:
  1. features: a crop × crop patch of latent pixels around the mouth (the centre of the true mouth mask over the
     latent's frames, sampled bilinearly), of latent frame j and of j − 1 (what a causal decoder has seen);
  2. targets: the true opening of the latent's video frames (4j − 3 … 4j);
  3. a two-layer MLP fitted on the train split's clips, scored on the eval split's (held-out voices, sentences and
     identities): Pearson r of the predicted per-frame opening against the truth, per clip and averaged
     (`r_per_frame`); the same with each latent's prediction averaged over its frames (`r_held`); and the
     correlation of the predicted and true deviations from each latent's mean (`r_within_latent`: 0 when the
     latents hold one mouth state).

    python -m engine.eval.mouth_probe --data data/heldout-espeak --train-clips 60 [--vae V] --out probe.json
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import DataError
from engine.eval.metrics import pearson


@dataclass
class ProbeClip:
    latents: np.ndarray  # float32 [C, L, h, w]
    opening: np.ndarray  # float64 [T], T = 1 + stride·(L − 1)
    centre: np.ndarray  # float32 [T, 2]: the mouth's (y, x) per frame, in [0, 1]


def mouth_centre(mask: np.ndarray) -> np.ndarray:
    """uint8 or float masks [T, S, S] -> the centre of each frame's mask, (y, x) in [0, 1]: [T, 2]."""
    m = torch.from_numpy(np.asarray(mask, np.float32))
    size = m.shape[-1]
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    w = m.flatten(1).sum(1).clamp(min=1e-6)
    return torch.stack([(m * ys).flatten(1).sum(1) / w, (m * xs).flatten(1).sum(1) / w], 1).numpy() / size


def features(clip: ProbeClip, stride: int, crop: int = 4) -> np.ndarray:
    """[L − 1, 2·C·crop²]: the patch around the mouth of latent frames j and j − 1, for j = 1 … L − 1."""
    z = torch.from_numpy(clip.latents).permute(1, 0, 2, 3)  # [L, C, h, w]
    h, w = z.shape[-2:]
    offsets = np.arange(crop) - (crop - 1) / 2
    rows = []
    for j in range(1, z.shape[0]):
        cy, cx = clip.centre[stride * j - stride + 1:stride * j + 1].mean(0)
        ys = (cy * h - 0.5 + offsets) / (h - 1) * 2 - 1  # align_corners coordinates of latent pixel centres
        xs = (cx * w - 0.5 + offsets) / (w - 1) * 2 - 1
        grid = torch.from_numpy(np.stack(np.meshgrid(xs, ys, indexing="xy"), -1)).float()[None].expand(2, -1, -1, -1)
        rows.append(F.grid_sample(z[[j, j - 1]], grid, align_corners=True).flatten().numpy())
    return np.array(rows, np.float32)


def targets(clip: ProbeClip, stride: int) -> np.ndarray:
    """[L − 1, stride]: the true opening of each latent frame's video frames."""
    frames = clip.latents.shape[1]
    return np.array([clip.opening[stride * j - stride + 1:stride * j + 1] for j in range(1, frames)])


def fit_mlp(x: np.ndarray, y: np.ndarray, hidden: int = 256, steps: int = 3000, seed: int = 0
            ) -> Callable[[np.ndarray], np.ndarray]:
    """A two-layer MLP from standardised features to the targets (AdamW, dropout 0.2, batches of 256)."""
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0) + 1e-6
    xt, yt = torch.from_numpy((x - mean) / std).float(), torch.from_numpy(y).float()
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.GELU(), torch.nn.Dropout(0.2),
                              torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, y.shape[1]))
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(len(xt), (256,), generator=g)
        loss = F.mse_loss(net(xt[i]), yt[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()

    def predict(features_: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy((features_ - mean) / std).float()).numpy()
    return predict


def score(predict: Callable[[np.ndarray], np.ndarray], clips: list[ProbeClip], stride: int, crop: int = 4
          ) -> dict[str, float]:
    """r_per_frame, r_held and r_within_latent of the module doc, over `clips`."""
    per_frame, held, dev_pred, dev_true = [], [], [], []
    for clip in clips:
        p, y = predict(features(clip, stride, crop)), targets(clip, stride)
        truth = clip.opening[:1 + p.size]
        per_frame.append(pearson(np.concatenate([truth[:1], p.ravel()]), truth))
        held.append(pearson(np.concatenate([truth[:1], np.repeat(p.mean(1), stride)]), truth))
        dev_pred.append((p - p.mean(1, keepdims=True)).ravel())
        dev_true.append((y - y.mean(1, keepdims=True)).ravel())
    return {"r_per_frame": float(np.mean(per_frame)), "r_held": float(np.mean(held)),
            "r_within_latent": pearson(np.concatenate(dev_pred), np.concatenate(dev_true)), "clips": len(clips)}


def encode_clips(vae, data: str, split: str, count: int, resolution: int) -> list[ProbeClip]:
    """The first `count` clips of a split, encoded whole by the VAE (frames area-resized to `resolution`)."""
    from engine.data.synthtalk import SynthTalk
    from engine.generate.avatar import fit_square

    dataset = SynthTalk(data, split)
    stride, p = vae.cfg.temporal_stride, next(vae.parameters())
    out = []
    for i in range(min(count, len(dataset))):
        clip = dataset.load(i)
        t = 1 + (len(clip.frames) - 1) // stride * stride
        video = torch.from_numpy(np.stack([fit_square(f, resolution) for f in clip.frames[:t]]))
        with torch.no_grad():
            z = vae.encode(video.permute(3, 0, 1, 2)[None].to(p.device, p.dtype) / 127.5 - 1)[0].float().cpu()
        out.append(ProbeClip(z.numpy(), clip.truth["mouth_open"][:t].astype(np.float64),
                             mouth_centre(clip.truth["mouth_mask"][:t])))
    return out


def probe(train: list[ProbeClip], held_out: list[ProbeClip], stride: int, crop: int = 4,
          steps: int = 3000) -> dict[str, float]:
    if not train or not held_out:
        raise DataError("the probe needs clips to fit on and clips to score")
    x = np.concatenate([features(c, stride, crop) for c in train])
    y = np.concatenate([targets(c, stride) for c in train])
    return score(fit_mlp(x, y, steps=steps), held_out, stride, crop)


def main(argv: list[str] | None = None) -> None:
    import argparse

    from engine.checkpoints.vae import load_vae
    from engine.generate.avatar import AvatarFiles

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a SynthTalk folder with train and eval clips")
    ap.add_argument("--vae", default=str(AvatarFiles().vae))
    ap.add_argument("--train-clips", type=int, default=60)
    ap.add_argument("--eval-clips", type=int, default=24, help="at most this many clips of the eval split")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3000, help="the MLP's training steps")
    ap.add_argument("--out", required=True, help="the JSON to write")
    args = ap.parse_args(argv)
    vae = load_vae(args.vae)
    stride = vae.cfg.temporal_stride
    train = encode_clips(vae, args.data, "train", args.train_clips, args.resolution)
    held_out = encode_clips(vae, args.data, "eval", args.eval_clips, args.resolution)
    truth_held = {"r_held": float(np.mean([pearson(np.concatenate([c.opening[:1], np.repeat(
        targets(c, stride).mean(1), stride)]), c.opening) for c in held_out]))}
    scores = {"probe": probe(train, held_out, stride, steps=args.steps), "truth held per latent": truth_held}
    Path(args.out).write_text(json.dumps(scores, indent=1))
    print(json.dumps(scores))


if __name__ == "__main__":
    main()
