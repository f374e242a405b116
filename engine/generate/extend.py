"""Long video by diffusion-forcing extension (SkyReels-V2, spec E.2): each new stretch of frames is generated
after the frames before it, which are kept as clean history -- or, optionally, lightly re-noised to
`history_sigma` and fed at that noise level, which SkyReels-V2 (`addnoise_condition`) and Self-Forcing
(`context_noise`) use to keep errors in the history from being copied forward.

  * the causal student (`StudentExtend`): chunk after chunk through the KV cache, each chunk attending to
    the sink and a rolling window of history -- the StreamingGenerator's step (`student_chunk`); like a
    stream, a shot opens on its portrait's latent (latent frame 0) and generates from frame 1;
  * the bidirectional teacher (`TeacherExtend`): windows of W latent frames whose first P frames are the
    last P finished frames (held at `history_sigma`, never updated) and whose W − P others are new.

Both keep a fixed number of latent frames (the KV ring, or P frames of history) however long the film.
"""
from __future__ import annotations

import torch

from engine.diffusion.flow import add_noise
from engine.generate.streaming import sigma_list, student_chunk
from engine.generate.windows import Known, Sampler, WindowModel
from engine.models.attention import KVCache
from engine.models.dit import DiT


class StudentExtend:
    """The causal student, chunk by chunk with its KV cache: the streaming path, as a long-video method."""

    def __init__(self, model: DiT, sink: torch.Tensor, text_kv: list | None, generator: torch.Generator, *,
                 steps: int, shift: float, guidance: float, window_frames: int, chunk_frames: int,
                 history_sigma: float):
        self.model, self.text_kv, self.generator = model, text_kv, generator
        self.sigmas = sigma_list(steps, shift)
        self.guidance, self.history_sigma, self.chunk_frames = guidance, history_sigma, chunk_frames
        self.latent_shape = (model.cfg.out_dim, *sink.shape[-2:])
        self.opening: torch.Tensor | None = sink[:, :, :1].clone()  # the shot's portrait: latent frame 0
        grid = model.token_grid(sink.shape[-2:])
        self.cache = KVCache(model.cache_config(grid, sink.shape[2], window_frames), batch=1, device=sink.device,
                             dtype=sink.dtype)
        model(sink, torch.zeros(1, sink.shape[2], device=sink.device), self.cache.sink(), text_kv=text_kv,
              sink_frames=sink.shape[2])

    @property
    def next_frames(self) -> int:
        return 1 if self.opening is not None else self.chunk_frames

    @property
    def held_latent_frames(self) -> int:
        """Latent frames of keys and values kept: the sink and the filled part of the ring."""
        c = self.cache.config
        return c.sink_frames + min(self.cache.frames_written, c.window_frames)

    def advance(self, windows: torch.Tensor, known: Known | None = None) -> torch.Tensor:
        """windows [1, c, window, mels] of the next c latent frames -> their latents [1, C, c, h, w]."""
        if self.opening is not None:  # the shot's first latent frame is its portrait (outside a mask: the source)
            x0, self.opening = self.opening, None
            return known.compose(x0) if known is not None else x0
        audio = self.model.encode_audio(windows)
        return student_chunk(self.model, self.cache, audio, self.text_kv, self.sigmas, self.generator,
                             self.latent_shape, self.guidance, self.history_sigma, known)

    def finish(self) -> torch.Tensor | None:
        return None

    def state_dict(self) -> dict[str, torch.Tensor]:
        c = self.cache
        return {"k": c.k, "v": c.v, "sink_k": c.sink_k, "sink_v": c.sink_v,
                "frames_written": torch.tensor([c.frames_written]),
                "opened": torch.tensor([self.opening is None])}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        c = self.cache
        for name in ("k", "v", "sink_k", "sink_v"):
            getattr(c, name).copy_(state[name])
        c.frames_written = int(state["frames_written"][0])
        # (a checkpoint of an earlier version has no flag: it generated frame 0, so any frame written opened it)
        if bool(state["opened"][0]) if "opened" in state else c.frames_written > 0:
            self.opening = None


class TeacherExtend:
    """The bidirectional teacher over windows of W frames: P of history (fixed), W − P new (W on the first)."""

    def __init__(self, model: DiT, sink: torch.Tensor, text_kv: list | None, generator: torch.Generator, *,
                 steps: int, shift: float, guidance: float, window_frames: int, history_frames: int,
                 history_sigma: float):
        self.model, self.generator = model, generator
        self.window = WindowModel(model, sink, text_kv, causal_chunk=None, guidance=guidance)
        self.sampler = Sampler.for_model("teacher", steps, shift)
        self.W, self.P, self.history_sigma = window_frames, history_frames, history_sigma
        self.history: torch.Tensor | None = None  # [1, C, P, h, w] the last P finished latents
        self.history_audio: torch.Tensor | None = None  # [1, P, window, mels] their audio windows
        self.latent_shape = (model.cfg.out_dim, *sink.shape[-2:])

    @property
    def next_frames(self) -> int:
        return self.W if self.history is None else self.W - self.P

    @property
    def held_latent_frames(self) -> int:
        return (0 if self.history is None else self.P) + self.next_frames

    def advance(self, windows: torch.Tensor, known: Known | None = None) -> torch.Tensor:
        """windows [1, n, window, mels] of the n = next_frames new latent frames -> their latents."""
        n, P = windows.shape[1], 0 if self.history is None else self.P
        g, like = self.generator, self.window.sink
        shape = (1, self.latent_shape[0], n, *self.latent_shape[1:])
        x = torch.randn(shape, generator=g, device=like.device, dtype=like.dtype)
        history, audio_windows = self.history, windows
        history_clean = history if history is not None else x[:, :, :0]
        if history is not None:
            assert self.history_audio is not None
            audio_windows = torch.cat([self.history_audio, windows], 1)
            if self.history_sigma > 0:
                history_noise = torch.randn(history.shape, generator=g, device=like.device, dtype=like.dtype)
                history = add_noise(history, history_noise, self.history_sigma)
        audio = self.model.encode_audio(audio_windows)
        for i, sigma in enumerate(self.sampler.sigmas):
            if known is not None:
                x = known.impose(x, sigma, g)
            sigmas = torch.tensor([self.history_sigma] * P + [sigma] * n)
            v = self.window(x if history is None else torch.cat([history, x], 2), sigmas, audio)[:, :, P:]
            noise = torch.randn(shape, generator=g, device=like.device, dtype=like.dtype) \
                if self.sampler.needs_noise(i) else None
            x = self.sampler.next(x, v, i, noise)
        if known is not None:
            x = known.compose(x)
        # the last P latents made so far (finished: outside a mask they are the source already) and their
        # audio become the next window's history
        self.history = torch.cat([history_clean, x], 2)[:, :, -self.P:].clone()
        self.history_audio = audio_windows[:, -self.P:].clone()
        return x

    def finish(self) -> torch.Tensor | None:
        return None

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.history is None or self.history_audio is None:
            return {}
        return {"history": self.history, "history_audio": self.history_audio}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.history, self.history_audio = state.get("history"), state.get("history_audio")
