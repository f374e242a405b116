"""A tiny autoencoder for the DiT's latent space, TAEHV-style (spec B.5): 2-D convolutions per frame, memory
blocks that see the previous time step, and 1×1 convolutions that pool or grow time. It decodes the same
normalised latents as the causal VAE, many times faster, and streams latent frame by latent frame.

Layouts: latents [B, z, F, h, w] (normalised, like the causal VAE's); video [B, 3, T, H, W] in [-1, 1] with
T = 4F − 3 (the first latent frame gives one frame: the first `frames_to_trim` grown frames are dropped).
Inside, frames are kept as [B, T, C, H, W]. The `taew2_1` preset has the public layout and parameter count
(11,315,539); `demo` matches the demo VAE's ×16 spatial, ×4 temporal latent space and is sized for a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from engine.errors import ConfigError


def conv(c_in: int, c_out: int, bias: bool = True, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)


def _frames(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a per-frame 2-D layer to x [B, T, C, H, W]."""
    y = layer(x.flatten(0, 1))  # [B*T, C', H', W']
    return y.unflatten(0, x.shape[:2])


class MemoryState:
    """The previous time step's input of every memory block of one decoder stream, in call order."""

    def __init__(self) -> None:
        self.slots: list[torch.Tensor | None] = []
        self.cursor = 0

    def start(self) -> "MemoryState":
        self.cursor = 0
        return self

    def exchange(self, last: torch.Tensor) -> torch.Tensor | None:
        """Store this chunk's last frame and return what the slot held before."""
        if self.cursor == len(self.slots):
            self.slots.append(None)
        previous, self.slots[self.cursor] = self.slots[self.cursor], last.detach()
        self.cursor += 1
        return previous

    def keep(self, first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two slots that hold the stream's first frame from its first chunk on: the frame, and a flag that is 1
        once it is held (both zeros before the stream starts, as an exported graph's state begins). `first` is
        this chunk's first frame [B, 1, ...]; returns (the stream's first frame, the flag before this chunk)."""
        while len(self.slots) < self.cursor + 2:
            self.slots.append(None)
        held, flag = self.slots[self.cursor], self.slots[self.cursor + 1]
        if held is None or flag is None:
            held, flag = torch.zeros_like(first), first.new_zeros(first.shape[0], *(1,) * (first.ndim - 1))
        held = flag * held + (1 - flag) * first
        self.slots[self.cursor], self.slots[self.cursor + 1] = held.detach(), torch.ones_like(flag)
        self.cursor += 2
        return held, flag


class Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """conv(x_t ‖ x_{t−1}) → ReLU → conv → ReLU → conv, plus a skip, then ReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Sequential(conv(2 * c_in, c_out), nn.ReLU(), conv(c_out, c_out), nn.ReLU(), conv(c_out, c_out))
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor, state: MemoryState) -> torch.Tensor:
        previous = state.exchange(x[:, -1:])
        if previous is None:
            previous = torch.zeros_like(x[:, :1])
        past = torch.cat([previous, x[:, :-1]], 1)  # x_{t-1} for every t, [B, T, C, H, W]
        return self.act(_frames(self.conv, torch.cat([x, past], 2)) + _frames(self.skip, x))


class TPool(nn.Module):
    """Mix `stride` consecutive frames into one (1×1 convolution over their stacked channels)."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels * stride, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = x.shape
        return _frames(self.conv, x.reshape(b, t // self.stride, self.stride * c, h, w))


class TGrow(nn.Module):
    """Grow each frame into `stride` frames (1×1 convolution to stride × channels, then split)."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = x.shape
        return _frames(self.conv, x).reshape(b, t * self.stride, c, h, w)


def _run(layers: nn.Sequential, x: torch.Tensor, state: MemoryState) -> torch.Tensor:
    for layer in layers:
        if isinstance(layer, MemBlock):
            x = layer(x, state)
        elif isinstance(layer, (TPool, TGrow, Clamp)):
            x = layer(x)
        else:
            x = _frames(layer, x)
    return x


# ----------------------------------------------------------------------------- the model

class TinyVAE(nn.Module):
    def __init__(self, cfg: TinyVAEConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.encoder_width
        enc: list[nn.Module] = [conv(3, w), nn.ReLU()]
        for pool in cfg.encoder_time_pool:
            enc += [TPool(w, pool), conv(w, w, bias=False, stride=2)] + [MemBlock(w, w) for _ in range(cfg.encoder_blocks)]
        enc.append(conv(w, cfg.z_dim))
        self.encoder = nn.Sequential(*enc)
        widths = cfg.decoder_widths
        dec: list[nn.Module] = [Clamp(), conv(cfg.z_dim * (2 if cfg.reference else 1), widths[0]), nn.ReLU()]
        for i, (blocks, grow) in enumerate(zip(cfg.decoder_blocks, cfg.decoder_time_up)):
            dec += [MemBlock(widths[i], widths[i]) for _ in range(blocks)]
            dec += [nn.Upsample(scale_factor=2), TGrow(widths[i], grow), conv(widths[i], widths[i + 1], bias=False)]
        dec += [nn.ReLU(), conv(widths[-1], 3)]
        self.decoder = nn.Sequential(*dec)

    @property
    def frames_to_trim(self) -> int:
        return self.cfg.temporal_stride - 1

    def decode_chunk(self, z: torch.Tensor, state: MemoryState, clamp: bool = True) -> torch.Tensor:
        """Latents [B, z, F, h, w] of a stream, in order -> video [B, 3, T, H, W] in [-1, 1]. The stream's
        first latent frame gives 1 frame, every other 4. Training passes clamp=False (gradients)."""
        first = not state.slots
        x, state = z.transpose(1, 2), state.start()  # [B, F, z, h, w]
        if self.cfg.reference:
            x = self._beside_reference(x, state)
        x = _run(self.decoder, x, state)  # [B, T, 3, H, W] in ~[0, 1]
        if first:
            x = x[:, self.frames_to_trim:]
        x = x * 2 - 1
        return (x.clamp(-1, 1) if clamp else x).transpose(1, 2)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode_chunk(z, MemoryState())

    @staticmethod
    def _beside_reference(x: torch.Tensor, state: MemoryState) -> torch.Tensor:
        """x [B, F, z, h, w], the next latent frames of a stream -> [B, F, 2z, h, w]: each beside the stream's
        latent frame 0 (the portrait's, which a session opens on), and the opening frame itself beside zeros.
        Why: without it, decoding a clip's *true* latents, the decoder paints blobs in other portraits' colours
        into the still backdrop from about the second second on (backdrop-half identity 0.925 on the held-out
        clips, the VAE's own decoder 0.971): its memory blocks see one latent frame back, the causal VAE's decoder
        much further. Decoding a whole clip and streaming it chunk by chunk agree."""
        held, flag = state.keep(x[:, :1])
        scale = torch.cat([flag, torch.ones_like(flag).expand(-1, x.shape[1] - 1, -1, -1, -1)], 1)
        return torch.cat([x, held * scale], 2)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video [B, 3, 1 + 4k, H, W] in [-1, 1] -> latents [B, z, 1 + k, h, w]. Frame 0 is repeated in front
        so that it alone makes latent frame 0, as in the causal VAE."""
        if self.encoder is None:
            raise ConfigError("this tiny VAE was loaded from a decoder-only checkpoint (the shipped one): "
                              "encode with the causal VAE, whose latents it decodes")
        s = self.cfg.temporal_stride
        if (video.shape[2] - 1) % s:
            raise ConfigError(f"a clip has 1 + {s}k frames, got {video.shape[2]}")
        x = ((video.transpose(1, 2) + 1) / 2)  # [B, T, 3, H, W] in [0, 1]
        x = torch.cat([x[:, :1].expand(-1, s - 1, -1, -1, -1), x], 1)
        return _run(self.encoder, x, MemoryState()).transpose(1, 2)


@dataclass(frozen=True)
class TinyVAEConfig:
    name: str
    decoder_widths: tuple[int, ...]  # one more than the stages: input width of each stage, then the output
    decoder_blocks: tuple[int, ...]  # memory blocks per stage
    decoder_time_up: tuple[int, ...]  # frames grown per stage
    encoder_time_pool: tuple[int, ...]  # frames pooled per stage
    encoder_width: int = 64
    encoder_blocks: int = 3
    z_dim: int = 16
    reference: bool = False  # the decoder also reads the stream's first latent frame beside each one (the portrait)

    def __post_init__(self) -> None:
        stages = len(self.decoder_blocks)
        if len(self.decoder_widths) != stages + 1 or len(self.decoder_time_up) != stages:
            raise ConfigError("decoder_widths needs stages + 1 entries and decoder_time_up one per stage")
        if self.temporal_stride != _product(self.encoder_time_pool):
            raise ConfigError("the encoder must pool time as much as the decoder grows it")

    @property
    def temporal_stride(self) -> int:
        return _product(self.decoder_time_up)

    @property
    def spatial_stride(self) -> int:
        return 2 ** len(self.decoder_blocks)


def _product(values: tuple[int, ...]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


TINY_PRESETS: dict[str, TinyVAEConfig] = {
    "taew2_1": TinyVAEConfig("taew2_1", decoder_widths=(256, 128, 64, 64), decoder_blocks=(3, 3, 3),
                             decoder_time_up=(1, 2, 2), encoder_time_pool=(2, 2, 1)),
    # 16x16 latents -> 128x128: time grows early, where frames are small; thin at full resolution.
    "demo": TinyVAEConfig("demo", decoder_widths=(64, 48, 24, 16), decoder_blocks=(2, 1, 1),
                          decoder_time_up=(2, 2, 1), encoder_time_pool=(2, 2, 1), encoder_width=32,
                          encoder_blocks=1, z_dim=32),
    # the same, reading the portrait's latent beside each latent frame: the still backdrop is copied, not guessed
    "demo-ref": TinyVAEConfig("demo-ref", decoder_widths=(64, 48, 24, 16), decoder_blocks=(2, 1, 1),
                              decoder_time_up=(2, 2, 1), encoder_time_pool=(2, 2, 1), encoder_width=32,
                              encoder_blocks=1, z_dim=32, reference=True),
}


def tiny_vae_config(name: str) -> TinyVAEConfig:
    if name not in TINY_PRESETS:
        raise ConfigError(f"unknown tiny VAE preset {name!r}; choose one of {sorted(TINY_PRESETS)}")
    return TINY_PRESETS[name]
