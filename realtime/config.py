"""Server and session settings: frozen dataclasses, validated once, printed by `talkstream serve`."""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.generate.avatar import ImageLimits
from engine.generate.streaming import STUDENT_WINDOW
from realtime.errors import RealtimeError

STEP_LEVELS = (4, 2, 1)  # the few-step lists the student is distilled for; adaptive quality walks down them
SESSION_BACKENDS = ("torch", "torch-cudagraph")  # the exporters' backends that need no exported bundle


@dataclass(frozen=True)
class SessionConfig:
    """How one session generates and plays out."""

    steps: int = 4  # denoising steps the session starts with
    adaptive: bool = True  # lower steps (4 -> 2 -> 1) when generation falls behind, raise them when ahead
    decoder: str = "tiny"  # "tiny" (speed) or "vae" (quality)
    backend: str | None = None  # None: the engine's eager generator; else its chunk step on this exporters backend
    chunk_frames: int = 1  # latent frames per chunk (1 latent frame = 4 video frames = 160 ms)
    window_frames: int = STUDENT_WINDOW  # latent frames of history in the rolling KV window
    seed: int = 0
    queue_chunks: int = 3  # generated chunks waiting for playout (the bounded asyncio.Queue)
    idle_ahead_s: float = 0.25  # idle (silent) chunks are generated only while less than this is buffered
    input_gap_s: float = 0.12  # ... and only when no audio arrived for this long (a live stream is not padded)
    max_buffered_audio_s: float = 120.0  # audio pushed ahead of playout (a TTS burst) before it is refused
    live_backlog_s: float = 1.0  # a live source (WebRTC) further behind than this at the lowest step drops it
    idle_timeout_s: float = 300.0  # a session that receives nothing for this long ends

    def __post_init__(self) -> None:
        if self.steps not in STEP_LEVELS:
            raise RealtimeError(f"steps must be one of {STEP_LEVELS}, got {self.steps}")
        if self.decoder not in ("tiny", "vae"):
            raise RealtimeError(f"decoder must be 'tiny' or 'vae', got {self.decoder!r}")
        if self.backend is not None and self.backend not in SESSION_BACKENDS:
            raise RealtimeError(f"backend must be None or one of {SESSION_BACKENDS}, got {self.backend!r}")
        if self.queue_chunks < 1:
            raise RealtimeError(f"queue_chunks must be >= 1, got {self.queue_chunks}")
        if min(self.idle_ahead_s, self.input_gap_s, self.max_buffered_audio_s, self.live_backlog_s,
               self.idle_timeout_s) <= 0:
            raise RealtimeError("durations in SessionConfig must be positive")


@dataclass(frozen=True)
class ServerConfig:
    """What `talkstream serve` runs: limits, auth and the session defaults."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_sessions: int = 2
    token: str | None = None  # bearer token required on every endpoint when set
    allowed_origins: tuple[str, ...] = ()  # websocket/page origins allowed when non-empty
    max_offer_bytes: int = 64 * 1024
    max_message_bytes: int = 1024 * 1024  # one websocket message (an audio chunk or a JSON command)
    max_uploads: int = 16  # uploaded portraits kept in memory (oldest dropped first)
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    resume_grace_s: float = 10.0  # a websocket session waits this long for its client to re-attach
    connect_timeout_s: float = 15.0  # a WebRTC caller that has not connected by then loses its slot
    retry_after_s: int = 5  # the Retry-After of a 503 when every slot is taken
    loopback_ice: bool = False  # gather ICE candidates on 127.0.0.1 only (tests, single-host set-ups)
    session: SessionConfig = field(default_factory=SessionConfig)

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise RealtimeError(f"max_sessions must be >= 1, got {self.max_sessions}")
        if self.max_message_bytes < 1024 or self.max_offer_bytes < 1024:
            raise RealtimeError("message and offer limits must be at least 1 KiB")
