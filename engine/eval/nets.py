"""The two reading networks of `talkstream eval`, both small CNNs trained by engine/train/eval_nets.py on
SynthTalk and shipped as safetensors:

  * MouthReader: a frame -> mouth opening, width and rounding (the viseme track's units, [0, 1]). The
    features keep their 4x4 layout into the head (no global pooling), because where the mouth is matters.
  * IdentityEmbedder: a frame -> a unit vector; cosine similarity says "same person". Trained with an
    additive-margin softmax (CosFace, Wang et al. 2018) over identities in the batch, plus embeddings of
    identities that belong to no split as extra negative classes (the public-identity negatives of
    AdaFedFR, Liu et al. 2022).

Both take uint8 RGB frames [N, H, W, 3] of any size; they resize to `input_size` themselves.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.errors import ConfigError


@dataclass(frozen=True)
class ReaderConfig:
    name: str
    input_size: int = 128
    widths: tuple[int, ...] = (32, 48, 64, 96, 128)  # one stride-2 stage each: 128 -> 4
    hidden: int = 256
    outputs: int = 3  # mouth reader: open, width, round; identity embedder: embedding size

    def __post_init__(self) -> None:
        if self.input_size % 2 ** len(self.widths):
            raise ConfigError(f"input_size {self.input_size} must divide by 2^{len(self.widths)}")

    @property
    def final_size(self) -> int:
        return self.input_size // 2 ** len(self.widths)


READER_PRESETS = {
    "mouth": ReaderConfig("mouth", outputs=3),
    "identity": ReaderConfig("identity", widths=(32, 48, 64, 96, 128), hidden=256, outputs=128),
}


def reader_config(name: str) -> ReaderConfig:
    if name not in READER_PRESETS:
        raise ConfigError(f"unknown reader preset {name!r}; choose one of {sorted(READER_PRESETS)}")
    return READER_PRESETS[name]


def trunk(widths: tuple[int, ...]) -> nn.Sequential:
    """Stride-2 conv stages, each conv3x3(s2) -> GroupNorm -> SiLU -> conv3x3 -> GroupNorm -> SiLU."""
    layers: list[nn.Module] = []
    c_in = 3
    for c in widths:
        layers += [nn.Conv2d(c_in, c, 3, 2, 1), nn.GroupNorm(8, c), nn.SiLU(),
                   nn.Conv2d(c, c, 3, 1, 1), nn.GroupNorm(8, c), nn.SiLU()]
        c_in = c
    return nn.Sequential(*layers)


def prepare(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, size, size] in [-1, 1]."""
    x = frames.permute(0, 3, 1, 2).float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="area" if x.shape[-1] > size else "bilinear")
    return x / 127.5 - 1


class MouthReader(nn.Module):
    def __init__(self, cfg: ReaderConfig = READER_PRESETS["mouth"]):
        super().__init__()
        self.cfg = cfg
        self.trunk = trunk(cfg.widths)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(cfg.widths[-1] * cfg.final_size ** 2, cfg.hidden),
                                  nn.SiLU(), nn.Linear(cfg.hidden, cfg.outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, 3, S, S] in [-1, 1] -> [N, 3]: opening, width, rounding."""
        return self.head(self.trunk(x))

    @torch.no_grad()
    def read(self, frames: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """uint8 frames [N, H, W, 3] -> float [N, 3] (opening, width, rounding)."""
        p = next(self.parameters())
        out = [self(prepare(frames[i:i + batch].to(p.device), self.cfg.input_size).to(p.dtype)).float().cpu()
               for i in range(0, len(frames), batch)]
        return torch.cat(out) if out else torch.zeros(0, self.cfg.outputs)


class IdentityEmbedder(nn.Module):
    def __init__(self, cfg: ReaderConfig = READER_PRESETS["identity"]):
        super().__init__()
        self.cfg = cfg
        self.trunk = trunk(cfg.widths)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(cfg.widths[-1] * cfg.final_size ** 2, cfg.hidden),
                                  nn.SiLU(), nn.Linear(cfg.hidden, cfg.outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, 3, S, S] in [-1, 1] -> unit embeddings [N, D]."""
        return F.normalize(self.head(self.trunk(x)).float(), dim=-1)

    @torch.no_grad()
    def embed(self, frames: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """uint8 frames [N, H, W, 3] -> unit embeddings [N, D] (float32, CPU)."""
        p = next(self.parameters())
        out = [self(prepare(frames[i:i + batch].to(p.device), self.cfg.input_size).to(p.dtype)).cpu()
               for i in range(0, len(frames), batch)]
        return torch.cat(out) if out else torch.zeros(0, self.cfg.outputs)


def margin_loss(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, scale: float = 30.0,
                margin: float = 0.35) -> torch.Tensor:
    """Additive-margin softmax (CosFace) with the other identities of the batch as classes, and `negatives`
    [M, D] (identities of no split) as extra classes. anchor/positive [P, D]: two views of P identities."""
    classes = torch.cat([positive, negatives])  # [P + M, D]
    logits = anchor @ classes.T  # [P, P + M] cosines
    target = torch.arange(len(anchor), device=anchor.device)
    logits = logits - margin * F.one_hot(target, len(classes)).to(logits.dtype)
    return F.cross_entropy(scale * logits, target)
