"""Long video by sliding windows whose overlapping latents are fused (SkyReels-Audio): windows of W latent
frames, each overlapping the one before by O frames; at every denoising step the overlap's latents are the
linear blend of the two windows' -- the earlier window's weight falling from O/(O+1) at the first
overlapping frame to 1/(O+1) at the last -- so the seam is spread over O frames instead of cut at one.

Windows are made one after the other, so memory stays constant: when window k runs, window k − 1 is
finished, and what it left behind is its tail -- the O frames it shares with window k -- as they stood at
every step (the "trajectory", N + 1 states), with the noise it drew for them. Window k starts its overlap
from that same noise (blending two independent noises would shrink their variance), draws the tail's
re-noising noise from it too (the student's sampler), and blends its overlap into the recorded trajectory
before each model call; the blended overlap frames are final when window k is. The teacher (Euler,
bidirectional) or the causal student (re-noising, block-causal over the window) runs each window.
"""
from __future__ import annotations

import torch

from engine.errors import ConfigError
from engine.generate.windows import Known, Sampler, WindowModel
from engine.models.dit import DiT


class WindowFuse:
    """Windows of W latent frames overlapping by O, fused at every step; `advance` returns finished frames."""

    def __init__(self, model: DiT, sink: torch.Tensor, text_kv: list | None, generator: torch.Generator, *,
                 model_kind: str, steps: int, shift: float, guidance: float, window_frames: int,
                 overlap_frames: int, chunk_frames: int):
        W, O = window_frames, overlap_frames
        if not 0 <= 2 * O <= W:
            raise ConfigError(f"fused windows need 0 <= 2 x overlap <= window, got overlap {O}, window {W}")
        if model_kind == "student" and W % chunk_frames:
            raise ConfigError(f"the student's window of {W} frames must be a multiple of its chunk of "
                              f"{chunk_frames}")
        self.model, self.generator, self.W, self.O = model, generator, W, O
        self.sampler = Sampler.for_model(model_kind, steps, shift)
        causal = chunk_frames if model_kind == "student" else None
        self.window = WindowModel(model, sink, text_kv, causal_chunk=causal, guidance=guidance)
        self.latent_shape = (model.cfg.out_dim, *sink.shape[-2:])
        self.device, self.dtype = sink.device, sink.dtype
        # earlier window's weight per overlap frame: O/(O+1) ... 1/(O+1)
        weights = torch.arange(O, 0, -1, dtype=torch.float32) / (O + 1)
        self.weights = weights.view(1, 1, O, 1, 1).to(sink.device, sink.dtype)
        self.tail: torch.Tensor | None = None  # [N + 1, 1, C, O, h, w] the tail's x at each step, then its result
        self.tail_noise: torch.Tensor | None = None  # [N, 1, C, O, h, w] re-noising noise drawn for it per step
        self.tail_audio: torch.Tensor | None = None  # [1, O, window, mels]
        self.tail_known: torch.Tensor | None = None  # [1, C, O, h, w] its source latents (dubbing)

    @property
    def next_frames(self) -> int:
        return self.W if self.tail is None else self.W - self.O

    @property
    def held_latent_frames(self) -> int:
        """Latent-frame-sized tensors held: the window being made and the recorded tail."""
        held = 0 if self.tail is None else self.tail.shape[0] * self.O
        held += 0 if self.tail_noise is None else self.tail_noise.shape[0] * self.O
        return held + self.W

    def _fresh(self, frames: int) -> torch.Tensor:
        shape = (1, self.latent_shape[0], frames, *self.latent_shape[1:])
        return torch.randn(shape, generator=self.generator, device=self.device, dtype=self.dtype)

    def _blend(self, x: torch.Tensor, recorded: torch.Tensor) -> torch.Tensor:
        """x [1, C, W, h, w] with its first O frames blended into the earlier window's `recorded` [1, C, O, h, w]."""
        head = self.weights * recorded + (1 - self.weights) * x[:, :, :self.O]
        return torch.cat([head, x[:, :, self.O:]], 2)

    def advance(self, windows: torch.Tensor, known: Known | None = None) -> torch.Tensor:
        """windows [1, n, window, mels] of the n = next_frames new latent frames -> the frames finished now:
        W − O of them (the earlier tail, fused, then new ones); the new tail waits for the next window."""
        W, O, first = self.W, self.O, self.tail is None
        if not first:
            assert self.tail_audio is not None and self.tail is not None
            windows = torch.cat([self.tail_audio, windows], 1)
            if self.tail_known is not None:
                assert known is not None, "known latents are given for every window or for none"
                known = Known(torch.cat([self.tail_known, known.latents], 2), known.mask)
        audio = self.model.encode_audio(windows)
        tail = self.tail if self.tail is not None else torch.zeros(0)  # the earlier window's trajectory
        x = self._fresh(W) if first else torch.cat([tail[0], self._fresh(W - O)], 2)  # shared start noise
        states, noises = [], []
        for i, sigma in enumerate(self.sampler.sigmas):
            if not first and O:
                x = self._blend(x, tail[i])
            if known is not None:
                x = known.impose(x, sigma, self.generator)
            states.append(x[:, :, W - O:])
            v = self.window(x, torch.full((W,), sigma), audio)
            noise = None
            if self.sampler.needs_noise(i):
                if first:
                    noise = self._fresh(W)
                else:  # the overlap re-noised with the noise the earlier window drew for it
                    assert self.tail_noise is not None
                    noise = torch.cat([self.tail_noise[i], self._fresh(W - O)], 2)
                noises.append(noise[:, :, W - O:])
            x = self.sampler.next(x, v, i, noise)
        if not first and O:
            x = self._blend(x, tail[-1])
        if known is not None:
            x = known.compose(x)
        states.append(x[:, :, W - O:])
        self.tail = torch.stack(states).clone()
        self.tail_noise = torch.stack(noises).clone() if noises else None
        self.tail_audio = windows[:, W - O:].clone()
        self.tail_known = known.latents[:, :, W - O:].clone() if known is not None else None
        return x[:, :, :W - O]

    def finish(self) -> torch.Tensor | None:
        """The last window's tail, which no later window will fuse with."""
        if self.tail is None or not self.O:
            return None
        out, self.tail = self.tail[-1], None
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        names = ("tail", "tail_noise", "tail_audio", "tail_known")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for n in ("tail", "tail_noise", "tail_audio", "tail_known"):
            setattr(self, n, state.get(n))
