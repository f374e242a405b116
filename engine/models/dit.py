"""The Wan2.1 diffusion transformer (spec A), with audio cross-attention and a pinned reference "sink" frame.

Reads like the model: helpers, layers, the block, the model, configs and presets. Public checkpoint names
and shapes are kept exactly (`patch_embedding`, `time_embedding.0`, `blocks.i.self_attn.q`, ...), so real
Wan2.1 T2V weights load as they are; the audio branch uses InfiniteTalk's per-block names
(`blocks.i.norm_x`, `blocks.i.audio_cross_attn.{q_linear,kv_linear,proj}`) with the output projection
initialised to zero, so a checkpoint without it behaves as before.

Layouts: latents [B, C, F, H, W] (normalised VAE latents); timesteps t [B, F] in [0, 1000] (t = 1000·σ),
one per latent frame; audio windows [B, F_video, window, n_mels] (log-mel, see engine.audio.features);
output: the flow velocity v ≈ noise − x0, [B, C_out, F, H, W]. Which frames of x are the sink, and who
attends to whom, is said by the attention layout passed in (engine.models.attention).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.audio.features import AudioFeatureConfig
from engine.errors import ConfigError
from engine.models.attention import KVCacheConfig, attention

Layout = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- helpers

def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's timestep sinusoid: [cos(t·ω), sin(t·ω)], ω_i = 10000^(−i/(dim/2)); float64 in, float32 out.
    t [N] raw timesteps in [0, 1000] -> [N, dim]."""
    half = dim // 2
    omega = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = t.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


class RMSNorm(nn.Module):
    """x·rsqrt(mean(x²)+eps)·weight, normalised in float32 (Wan's WanRMSNorm)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = _at_least_float32(x)
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (Wan's WanLayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = _at_least_float32(x)
        w = self.weight.to(xf.dtype) if self.weight is not None else None
        b = self.bias.to(xf.dtype) if self.bias is not None else None
        return F.layer_norm(xf, self.normalized_shape, w, b, self.eps).type_as(x)


# ----------------------------------------------------------------------------- attention layers

class SelfAttention(nn.Module):
    """q/k/v/o projections, q and k RMS-normalised over the full width before the split into heads;
    where the tokens look (and RoPE) is up to the layout."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, layout: Layout, layer: int) -> torch.Tensor:
        heads = (self.num_heads, -1)
        q = self.norm_q(self.q(x)).unflatten(-1, heads)  # [B, L, H, D]
        k = self.norm_k(self.k(x)).unflatten(-1, heads)
        v = self.v(x).unflatten(-1, heads)
        return self.o(layout(layer, q, k, v).flatten(2))


class TextCrossAttention(nn.Module):
    """Video tokens attend to the (unmasked) text rows; the text keys/values are computed once by `kv`."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heads = (self.num_heads, -1)
        return self.norm_k(self.k(context)).unflatten(-1, heads), self.v(context).unflatten(-1, heads)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))  # [B, L, H, D]
        return self.o(attention(q, *kv).flatten(2))


class AudioCrossAttention(nn.Module):
    """Tokens of latent frame j attend only to the audio tokens of frame j (InfiniteTalk's layout).
    `kv_linear` emits k then v; `proj` starts at zero."""

    def __init__(self, dim: int, audio_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(audio_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """x [B, F, T, dim] normalised video tokens; audio [B, F, A, audio_dim] -> [B, F, T, dim]."""
        B, F, T, _ = x.shape
        q = self.q_linear(x).reshape(B * F, T, self.num_heads, -1)  # [B*F, T, H, D]
        kv = self.kv_linear(audio).reshape(B * F, audio.shape[2], 2, self.num_heads, -1)  # [B*F, A, 2, H, D]
        out = attention(q, kv[:, :, 0], kv[:, :, 1])  # [B*F, T, H, D]
        return self.proj(out.reshape(B, F, T, -1))


class AudioProjection(nn.Module):
    """A latent frame's log-mel window -> `tokens` audio tokens: MLP (ReLU) then LayerNorm per token."""

    def __init__(self, in_dim: int, hidden: int, tokens: int, audio_dim: int):
        super().__init__()
        self.tokens = tokens
        self.proj1 = nn.Linear(in_dim, hidden)
        self.proj2 = nn.Linear(hidden, hidden)
        self.proj3 = nn.Linear(hidden, tokens * audio_dim)
        self.norm = nn.LayerNorm(audio_dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [B, F, window, n_mels] -> [B, F, tokens, audio_dim]."""
        h = torch.relu(self.proj1(windows.flatten(2)))  # [B, F, hidden]
        h = torch.relu(self.proj2(h))
        return self.norm(self.proj3(h).unflatten(-1, (self.tokens, -1)))


class ConvAudioEncoder(nn.Module):
    """A latent frame's log-mel window -> one audio token per video frame (the demo preset's encoder).

    Dilated 1-D convolutions run over mel time (`trunk`): the same weights at every mel frame, so what is learnt
    of a sound holds wherever it falls in the window and for voices never heard (a flattened-window MLP has to
    learn each position apart). Each video frame's own mel frames are averaged into its token, then a linear
    map (`token`), a learnt embedding of the token's place in the latent frame (`position`: the audio
    attention is blind to order, and a latent frame holds several video frames), and LayerNorm. The trunk can be pretrained on SynthTalk's mouth tracks
    (engine.train.audio_encoder) and kept frozen while the DiT learns to read its tokens."""

    def __init__(self, audio: AudioFeatureConfig, channels: int, tokens: int, audio_dim: int):
        super().__init__()
        if tokens != audio.video_frames_per_latent:
            raise ConfigError(f"the conv audio encoder makes one token per video frame: audio_tokens must be "
                              f"{audio.video_frames_per_latent}, got {tokens}")
        self.lookback, self.per_token, self.tokens = audio.lookback_mel_frames, audio.mel_frames_per_video_frame, tokens
        c = channels
        self.trunk = nn.Sequential(nn.Conv1d(audio.n_mels, c, 3, padding=1), nn.GELU(),
                                   nn.Conv1d(c, c, 3, padding=1), nn.GELU(),
                                   nn.Conv1d(c, c, 3, padding=2, dilation=2), nn.GELU(),
                                   nn.Conv1d(c, c, 3, padding=4, dilation=4), nn.GELU())
        self.token = nn.Linear(c, audio_dim)
        self.position = nn.Parameter(torch.randn(tokens, audio_dim))
        self.norm = nn.LayerNorm(audio_dim)

    def features(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [B, F, window, n_mels] -> trunk features of each video frame [B, F, tokens, channels]."""
        B, F_, W, M = windows.shape
        h = self.trunk(windows.reshape(B * F_, W, M).transpose(1, 2))  # [B*F, c, window]
        own = h[:, :, self.lookback:self.lookback + self.tokens * self.per_token]  # the latent frame's own mel frames
        return own.unflatten(2, (self.tokens, self.per_token)).mean(3).transpose(1, 2).reshape(B, F_, self.tokens, -1)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [B, F, window, n_mels] -> [B, F, tokens, audio_dim]."""
        return self.norm(self.token(self.features(windows)) + self.position)


# ----------------------------------------------------------------------------- block

class Block(nn.Module):
    """Wan block: modulated self-attention (gated), text cross-attention (norm3, no gate), audio
    cross-attention (norm_x, no gate), modulated FFN (gated). The residual stream x and the modulation
are kept in at least float32 (as Wan does under autocast); the layers run in the weights' dtype."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.eps)
        if cfg.text_dim:
            self.norm3 = LayerNorm(dim, cfg.eps, elementwise_affine=True)
            self.cross_attn = TextCrossAttention(dim, cfg.num_heads, cfg.eps)
        if cfg.audio_dim:
            self.norm_x = LayerNorm(dim, cfg.eps, elementwise_affine=True)
            self.audio_cross_attn = AudioCrossAttention(dim, cfg.audio_dim, cfg.num_heads)
        self.norm2 = LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / math.sqrt(dim))

    def forward(self, x: torch.Tensor, e0: torch.Tensor, layout: Layout, layer: int,
                text_kv: tuple[torch.Tensor, torch.Tensor] | None, audio: torch.Tensor | None,
                sink_frames: int) -> torch.Tensor:
        """x [B, F, T, dim] and e0 [B, F, 6, dim] in the residual dtype; audio [B, F - sink_frames, A, Da]."""
        dt, rdt = self.self_attn.norm_q.weight.dtype, x.dtype  # the layers' dtype (a norm's: linears may be fp8)
        m = (self.modulation + e0).unsqueeze(3).unbind(2)  # 6 x [B, F, 1, dim]
        h = self.norm1(x) * (1 + m[1]) + m[0]
        x = x + self.self_attn(h.flatten(1, 2).to(dt), layout, layer).unflatten(1, x.shape[1:3]).to(rdt) * m[2]
        if text_kv is not None:
            x = x + self.cross_attn(self.norm3(x).flatten(1, 2).to(dt), text_kv).unflatten(1, x.shape[1:3]).to(rdt)
        if audio is not None:
            vid = x[:, sink_frames:]
            out = self.audio_cross_attn(self.norm_x(vid).to(dt), audio).to(rdt)
            x = torch.cat([x[:, :sink_frames], vid + out], 1)
        h = self.norm2(x) * (1 + m[4]) + m[3]
        return x + self.ffn(h.to(dt)).to(rdt) * m[5]


class Head(nn.Module):
    def __init__(self, dim: int, out_features: int, eps: float):
        super().__init__()
        self.norm = LayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_features)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / math.sqrt(dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x [B, F, T, dim]; e [B, F, dim] -> [B, F, T, out_features]."""
        shift, scale = (self.modulation + e.unsqueeze(2)).unsqueeze(3).unbind(2)  # [B, F, 1, dim] each
        return self.head((self.norm(x) * (1 + scale) + shift).to(self.head.weight.dtype))


# ----------------------------------------------------------------------------- model

class DiT(nn.Module):
    """Wan2.1 DiT. `forward(x, t, layout, audio=None, text_kv=None, sink_frames=0)`: see module doc."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        if cfg.text_dim:
            self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"),
                                                nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        if cfg.audio_dim and cfg.audio_encoder == "conv":
            self.audio_proj = ConvAudioEncoder(AudioFeatureConfig(), cfg.audio_hidden, cfg.audio_tokens, cfg.audio_dim)
        elif cfg.audio_dim:
            self.audio_proj = AudioProjection(cfg.audio_in_dim, cfg.audio_hidden, cfg.audio_tokens, cfg.audio_dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.head = Head(dim, math.prod(cfg.patch_size) * cfg.out_dim, cfg.eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Wan's init (xavier linears, zero biases, N(0, 0.02) embeddings, zero head) and zero audio output."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        nn.init.zeros_(self.patch_embedding.bias)
        embeddings = [self.time_embedding] + ([self.text_embedding] if self.cfg.text_dim else [])
        for seq in embeddings:
            for m in seq.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
        self.init_audio_branch()

    def audio_branch(self) -> list[nn.Module]:
        """The modules public Wan checkpoints lack: the audio projection and each block's audio attention."""
        if not self.cfg.audio_dim:
            return []
        return [self.audio_proj] + [m for b in self.blocks for m in (b.norm_x, b.audio_cross_attn)]

    def init_audio_branch(self) -> None:
        """Xavier linears, unit LayerNorms, and a zero output projection: a new branch changes nothing."""
        for module in self.audio_branch():
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.LayerNorm):
                    m.reset_parameters()
        for block in self.blocks if self.cfg.audio_dim else []:
            nn.init.zeros_(block.audio_cross_attn.proj.weight)

    # -- conditioning computed once per session

    def encode_text(self, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Text embeddings [B, Lc, text_dim] -> per-block cross-attention keys/values."""
        if not self.cfg.text_dim:
            raise ConfigError(f"preset {self.cfg.name!r} has no text conditioning (text_dim=0)")
        ctx = self.text_embedding(context.to(self.patch_embedding.weight.dtype))
        return [block.cross_attn.kv(ctx) for block in self.blocks]

    def encode_audio(self, windows: torch.Tensor) -> torch.Tensor:
        """Log-mel windows [B, F, window, n_mels] -> audio tokens [B, F, tokens, audio_dim]."""
        return self.audio_proj(windows.to(self.patch_embedding.weight.dtype))

    def cache_config(self, grid_hw: tuple[int, int], sink_frames: int, window_frames: int) -> KVCacheConfig:
        cfg = self.cfg
        return KVCacheConfig(cfg.num_layers, cfg.num_heads, cfg.dim // cfg.num_heads, grid_hw, sink_frames,
                             window_frames)

    def token_grid(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        _, ph, pw = self.cfg.patch_size
        return latent_hw[0] // ph, latent_hw[1] // pw

    def forward(self, x: torch.Tensor, t: torch.Tensor, layout: Layout, audio: torch.Tensor | None = None,
                text_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
                sink_frames: int = 0) -> torch.Tensor:
        """x [B, C, F, H, W] latents of which the first `sink_frames` frames are the reference; t [B, F];
        audio: audio tokens [B, F - sink_frames, tokens, audio_dim] from `encode_audio`, or None
        (unconditional); text_kv from `encode_text`, or None. Returns the velocity [B, C_out, F, H, W]."""
        cfg = self.cfg
        B, _, F, H, W = x.shape
        pt, ph, pw = cfg.patch_size
        dt = self.patch_embedding.weight.dtype
        x = _at_least_float32(self.patch_embedding(x.to(dt)))  # [B, dim, F, H/ph, W/pw]
        rdt = x.dtype
        gh, gw = x.shape[-2:]
        x = x.flatten(3).permute(0, 2, 3, 1)  # [B, F, T, dim]
        e = self.time_embedding(sinusoidal_embedding(t.reshape(-1), cfg.freq_dim).to(x.device, dt))
        e0 = self.time_projection(e).unflatten(-1, (6, cfg.dim)).unflatten(0, (B, F)).to(rdt)  # [B, F, 6, dim]
        e = e.unflatten(0, (B, F)).to(rdt)  # [B, F, dim]
        for i, block in enumerate(self.blocks):
            x = block(x, e0, layout, i, text_kv[i] if text_kv is not None else None, audio, sink_frames)
        out = _at_least_float32(self.head(x, e))  # [B, F, T, pt*ph*pw*C]
        out = out.reshape(B, F, gh, gw, pt, ph, pw, cfg.out_dim)
        return out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(B, cfg.out_dim, F * pt, gh * ph, gw * pw)


def emotion_tokens(expression: torch.Tensor, text_dim: int) -> torch.Tensor:
    """Expression ids [B] (SynthTalk: neutral, happy, sad, surprised, angry) -> one text token per clip
    [B, 1, text_dim], a one-hot: the demo model's text condition (no text encoder is shipped)."""
    return F.one_hot(expression.long(), text_dim).float()[:, None]


# ----------------------------------------------------------------------------- configs and presets

AUDIO_ENCODERS = ("mlp", "conv")


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of one DiT. `text_dim` 0 drops the text branch; `audio_dim` 0 drops the audio branch.
    `audio_in_dim` is the flattened log-mel window of one latent frame (window × n_mels)."""

    name: str
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int = 16
    out_dim: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    freq_dim: int = 256
    text_dim: int = 4096
    eps: float = 1e-6
    audio_dim: int = 768
    audio_tokens: int = 32
    audio_hidden: int = 512
    audio_in_dim: int = 0
    audio_encoder: str = "mlp"  # "mlp": InfiniteTalk's flattened-window projection; "conv": ConvAudioEncoder

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ConfigError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if (self.dim // self.num_heads) % 2:
            raise ConfigError(f"head_dim {self.dim // self.num_heads} must be even for RoPE")
        if self.patch_size[0] != 1:
            raise ConfigError("temporal patch size must be 1: one latent frame is one attention frame")
        if self.audio_dim and self.audio_in_dim <= 0:
            raise ConfigError("a DiT with audio needs audio_in_dim = window × n_mels of the audio features")
        if self.audio_encoder not in AUDIO_ENCODERS:
            raise ConfigError(f"unknown audio_encoder {self.audio_encoder!r}; choose one of {list(AUDIO_ENCODERS)}")

    def with_overrides(self, **kw: object) -> "DiTConfig":
        return replace(self, **kw)


# Every preset reads the default log-mel windows: window_mel_frames × n_mels values per latent frame.
_AUDIO = AudioFeatureConfig()
_AUDIO_IN = _AUDIO.window_mel_frames * _AUDIO.n_mels

PRESETS: dict[str, DiTConfig] = {
    # ~7M parameters: streams in real time on 2 CPU cores (16×16 latents of the demo VAE's 32 channels, 64 tokens
    # a frame; 128×128 frames).
    "demo": DiTConfig("demo", in_dim=32, out_dim=32, dim=256, ffn_dim=512, num_heads=4, num_layers=6, text_dim=64,
                      audio_dim=128, audio_tokens=4, audio_hidden=256, audio_in_dim=_AUDIO_IN),
    "wan-1.3b": DiTConfig("wan-1.3b", dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, audio_in_dim=_AUDIO_IN),
    "wan-14b": DiTConfig("wan-14b", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, audio_in_dim=_AUDIO_IN),
}


def dit_config(name: str) -> DiTConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown DiT preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
