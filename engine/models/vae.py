"""Causal 3D convolutional VAE in the Wan2.1 layout (spec B), decoding chunk by chunk with an explicit cache.

Video [B, 3, T, H, W] in [-1, 1] with T = 1 + 4k; latents [B, z, 1 + k, H/s, W/s], normalised per channel
((μ − mean) / std) so the DiT sees roughly unit-variance latents. Time is causal: every temporal convolution
pads on the past side only, so frame t of the output depends on frames ≤ t of the input.

Chunking (B.4): the encoder takes the first frame alone, then groups of 4 frames; the decoder takes the first
latent frame alone (→ 1 frame), then any number of latent frames (→ 4 frames each). Across calls, each causal
convolution keeps the last 2 frames of its input in a `FeatureCache` that the caller creates and passes in,
so a stream decoded one latent frame at a time equals the whole clip decoded at once, with constant memory.

Names and shapes follow the public `Wan2.1_VAE.pth` (encoder.conv1, encoder.downsamples.N, encoder.middle,
encoder.head, conv1, conv2, decoder.*), so its tensors load as they are once converted to safetensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.errors import ConfigError

CACHE_T = 2  # frames of history a 3-tap causal convolution needs


# ----------------------------------------------------------------------------- the cache

class FeatureCache:
    """The last CACHE_T input frames of every causal convolution of one coder, in call order.
    `start()` before each chunk; slots are created on the first chunk and only replaced afterwards."""

    def __init__(self) -> None:
        self.slots: list[torch.Tensor | None] = []
        self.cursor = 0

    def start(self) -> "FeatureCache":
        self.cursor = 0
        return self

    def take(self) -> int:
        if self.cursor == len(self.slots):
            self.slots.append(None)
        self.cursor += 1
        return self.cursor - 1

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.slots if t is not None)


def _remember(x: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """The last CACHE_T frames of the stream so far, given this chunk x and the previous slot."""
    tail = x[:, :, -CACHE_T:]
    if tail.shape[2] < CACHE_T and previous is not None:
        tail = torch.cat([previous[:, :, -(CACHE_T - tail.shape[2]):], tail], 2)
    return tail.detach().clone()


# ----------------------------------------------------------------------------- layers

class CausalConv3d(nn.Conv3d):
    """Conv3d padded 2·p_t frames on the past side only (spatial padding symmetric); with a cache, the
    previous chunk's last frames replace that padding."""

    def __init__(self, c_in: int, c_out: int, kernel, stride=1, padding=0):
        super().__init__(c_in, c_out, kernel, stride)
        pt, ph, pw = padding if isinstance(padding, tuple) else (padding,) * 3
        self.causal_pad = (pw, pw, ph, ph, 2 * pt, 0)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:  # type: ignore[override]
        pad = list(self.causal_pad)
        if cache is not None and pad[4] > 0:
            idx = cache.take()
            previous = cache.slots[idx]
            cache.slots[idx] = _remember(x, previous)
            if previous is not None:
                x = torch.cat([previous, x], 2)
                pad[4] -= previous.shape[2]
        return super().forward(F.pad(x, pad))


class RMSNorm(nn.Module):
    """L2-normalise over channels, times √C and a learned gain (Wan's RMS_norm; no bias)."""

    def __init__(self, dim: int, images: bool):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(c_in, images=False), nn.SiLU(), CausalConv3d(c_in, c_out, 3, padding=1),
            RMSNorm(c_out, images=False), nn.SiLU(), nn.Dropout(0.0), CausalConv3d(c_out, c_out, 3, padding=1))
        self.shortcut = CausalConv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        h = self.shortcut(x)
        for layer in self.residual:
            x = layer(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head spatial self-attention within each frame (1×1 conv q/k/v), residual."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.proj.weight)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))  # [B*T, C, H, W]
        q, k, v = self.to_qkv(y).reshape(b * t, 1, 3 * c, h * w).transpose(2, 3).chunk(3, dim=-1)  # [B*T,1,HW,C]
        y = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)
        y = self.proj(y).reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)  # [B, C, T, H, W]
        return x + y


class Resample(nn.Module):
    """×2 spatial down/up-sampling per frame, optionally with a causal ×2 in time (`time_conv`)."""

    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                          nn.Conv2d(dim, dim // 2, 3, padding=1))
            if mode == "upsample3d":  # C -> 2C channels that become 2 frames
                self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0))
        elif mode.startswith("downsample"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
            if mode == "downsample3d":  # stride 2 in time, no padding: the cache supplies the past frame
                self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=0)
        else:
            raise ConfigError(f"unknown resample mode {mode!r}")

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        b, c = x.shape[:2]
        if self.mode == "upsample3d":
            x = self._time_up(x, cache)
        t = x.shape[2]
        y = self.resample(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, *x.shape[3:]))  # [B*T, C', H', W']
        x = y.reshape(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)
        if self.mode == "downsample3d":
            x = self._time_down(x, cache)
        return x

    def _time_up(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """The stream's first latent frame stays one frame; every later frame becomes two, through a causal
        time convolution whose history starts at zero (Wan's 'Rep' marker)."""
        idx = cache.take()
        if cache.slots[idx] is None:  # first chunk: pass through and mark the stream as started
            if x.shape[2] != 1:
                raise ConfigError("the first chunk of a stream must hold exactly one latent frame")
            cache.slots[idx] = x.new_zeros(0)
            cache.take()  # the time convolution's slot, left empty: its history starts at zero
            return x
        b, c, t, h, w = x.shape
        y = self.time_conv(x, cache).reshape(b, 2, c, t, h, w)
        return torch.stack([y[:, 0], y[:, 1]], 3).reshape(b, c, 2 * t, h, w)  # interleave the two frames

    def _time_down(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """The first chunk (one frame) passes through; later chunks prepend the last frame seen and halve."""
        idx = cache.take()
        previous = cache.slots[idx]
        cache.slots[idx] = x[:, :, -1:].detach().clone()
        return x if previous is None else self.time_conv(torch.cat([previous, x], 2))


# ----------------------------------------------------------------------------- encoder and decoder

def _run(layers: nn.ModuleList | nn.Sequential, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
    for layer in layers:
        x = layer(x, cache) if isinstance(layer, (CausalConv3d, ResidualBlock, Resample, AttentionBlock)) \
            else layer(x)
    return x


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        down: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                down.append(ResidualBlock(c_in, c_out))
                c_in = c_out
            if i != len(cfg.dim_mult) - 1:
                down.append(Resample(c_out, "downsample3d" if cfg.temporal_down[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*down)
        self.middle = nn.Sequential(ResidualBlock(dims[-1], dims[-1]), AttentionBlock(dims[-1]),
                                    ResidualBlock(dims[-1], dims[-1]))
        self.head = nn.Sequential(RMSNorm(dims[-1], images=False), nn.SiLU(),
                                  CausalConv3d(dims[-1], 2 * cfg.z_dim, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for part in (self.downsamples, self.middle, self.head):
            x = _run(part, x, cache)
        return x


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.base_dim * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
        temporal_up = tuple(reversed(cfg.temporal_down))
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0]))
        up: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:  # the previous resample halved the channels
                c_in = c_in // 2
            for _ in range(cfg.num_res_blocks + 1):
                up.append(ResidualBlock(c_in, c_out))
                c_in = c_out
            if i != len(cfg.dim_mult) - 1:
                up.append(Resample(c_out, "upsample3d" if temporal_up[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*up)
        self.head = nn.Sequential(RMSNorm(dims[-1], images=False), nn.SiLU(),
                                  CausalConv3d(dims[-1], 3, 3, padding=1))

    def forward(self, z: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        x = self.conv1(z, cache)
        for part in (self.middle, self.upsamples, self.head):
            x = _run(part, x, cache)
        return x


# ----------------------------------------------------------------------------- the VAE

class CausalVAE(nn.Module):
    """encode/decode whole clips, or `encode_chunk`/`decode_chunk` with a FeatureCache per stream."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.conv1 = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder(cfg)
        self.register_buffer("mean", torch.tensor(cfg.latent_mean).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.latent_std).view(1, -1, 1, 1, 1), persistent=False)

    # -- one chunk of a stream (a new stream's first frame is always taken alone)

    def encode_chunk(self, video: torch.Tensor, cache: FeatureCache, sample: bool = False,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """video [B, 3, T, H, W] in [-1, 1], the next frames of a stream (the first frame alone, then
        groups of 4) -> normalised latents [B, z, T', H/s, W/s] (the posterior mean, or a sample of it)."""
        if not cache.slots and video.shape[2] > 1:
            return torch.cat([self.encode_chunk(video[:, :, :1], cache, sample, generator),
                              self.encode_chunk(video[:, :, 1:], cache, sample, generator)], 2)
        mu, log_var = self.conv1(self.encoder(video, cache.start())).chunk(2, dim=1)
        if sample:
            mu = mu + torch.exp(0.5 * log_var.clamp(-30, 20)) * torch.randn(
                mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return (mu - self.mean) / self.std

    def decode_chunk(self, z: torch.Tensor, cache: FeatureCache, clamp: bool = True) -> torch.Tensor:
        """Normalised latents [B, z, F, h, w], the next latent frames of a stream -> video [B, 3, T, H, W]
        in [-1, 1]: 1 frame for the stream's first latent frame, 4 for every other. Training passes
        clamp=False: a clamp would stop the gradient of every saturated pixel."""
        if not cache.slots and z.shape[2] > 1:
            return torch.cat([self.decode_chunk(z[:, :, :1], cache, clamp), self.decode_chunk(z[:, :, 1:], cache, clamp)],
                             2)
        x = self.decoder(self.conv2(z * self.std + self.mean), cache.start())
        return x.clamp(-1, 1) if clamp else x

    # -- whole clips: one call each, so a stream of small chunks must give the same result

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        if (video.shape[2] - 1) % self.cfg.temporal_stride:
            raise ConfigError(f"a clip has 1 + {self.cfg.temporal_stride}k frames, got {video.shape[2]}")
        return self.encode_chunk(video, FeatureCache())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode_chunk(z, FeatureCache())

    def forward(self, video: torch.Tensor, generator: torch.Generator | None = None):
        """Training pass: (reconstruction, posterior mean μ, log-variance) through a sampled latent."""
        cache = FeatureCache()
        h = torch.cat([self.conv1(self.encoder(part, cache.start()))
                       for part in (video[:, :, :1], video[:, :, 1:]) if part.shape[2]], 2)
        mu, log_var = h.chunk(2, dim=1)
        z = mu + torch.exp(0.5 * log_var.clamp(-30, 20)) * torch.randn(mu.shape, generator=generator,
                                                                       device=mu.device, dtype=mu.dtype)
        return self.decode_chunk((z - self.mean) / self.std, FeatureCache(), clamp=False), mu, log_var


# ----------------------------------------------------------------------------- configs and presets

WAN_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
            0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
           3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclass(frozen=True)
class VAEConfig:
    name: str
    base_dim: int
    dim_mult: tuple[int, ...]
    num_res_blocks: int
    temporal_down: tuple[bool, ...]  # per downsampling stage
    z_dim: int = 16
    latent_mean: tuple[float, ...] = field(default=(0.0,) * 16)
    latent_std: tuple[float, ...] = field(default=(1.0,) * 16)

    def __post_init__(self) -> None:
        if len(self.temporal_down) != len(self.dim_mult) - 1:
            raise ConfigError(f"temporal_down needs one flag per downsampling stage ({len(self.dim_mult) - 1})")
        if len(self.latent_mean) != self.z_dim or len(self.latent_std) != self.z_dim:
            raise ConfigError(f"latent_mean/std need {self.z_dim} values")

    @property
    def spatial_stride(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(self.temporal_down)

    def with_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> "VAEConfig":
        return replace(self, latent_mean=tuple(float(v) for v in mean), latent_std=tuple(float(v) for v in std))


VAE_PRESETS: dict[str, VAEConfig] = {
    "wan": VAEConfig("wan", base_dim=96, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                     temporal_down=(False, True, True), latent_mean=WAN_MEAN, latent_std=WAN_STD),
    # 128x128 video -> 16x16 latents: the Wan compression (x8 spatial, x4 temporal, 16 channels) at a
    # sixth of its width. A x16 preset at 256x256 (same latent grid, so the same DiT cost) was tried on
    # SynthTalk first: 4x the pixels per latent value, and after 1.3k steps it had not learnt the mouth.
    # 32 latent channels, not Wan's 16: each latent frame holds 4 frames, and at 128x128 the mouth covers about
    # 2x1 latent cells; with 16 channels the round trip of held-out clips read the mouth at r 0.74 where one
    # frame alone read 0.92 (2026-12-05): the mouth's motion within a latent frame did not fit.
    "demo": VAEConfig("demo", base_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=1,
                      temporal_down=(False, True, True), z_dim=32, latent_mean=(0.0,) * 32, latent_std=(1.0,) * 32),
}


def vae_config(name: str) -> VAEConfig:
    if name not in VAE_PRESETS:
        raise ConfigError(f"unknown VAE preset {name!r}; choose one of {sorted(VAE_PRESETS)}")
    return VAE_PRESETS[name]


def latent_frames(video_frames: int, cfg: VAEConfig) -> int:
    return 1 + (video_frames - 1) // cfg.temporal_stride


def video_frames(num_latent_frames: int, cfg: VAEConfig) -> int:
    return 1 + cfg.temporal_stride * (num_latent_frames - 1) if num_latent_frames else 0


