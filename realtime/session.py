"""A session: one StreamingGenerator driven by one client, on its own worker thread, played out on the
A/V clock.

    client ──push_audio/clear/mark──► command queue ──► worker thread: StreamingGenerator.step()
                                                              │  (never on the event loop)
                                        bounded asyncio.Queue ◄┘  segments tagged with an epoch
                                                 │
                 pacer task, every 20 ms: Playout.tick() ──► sinks (WebRTC tracks, a websocket)

A clear bumps the epoch: the playout and the queue are emptied at once on the loop (the client gets
`playback_finished` without waiting for the worker), and any segment the worker was still making for the
old epoch is thrown away when it arrives. The worker generates silence (an idle face) only when playout is
about to run dry and no input is arriving, so a live stream is never padded with silence mid-sentence.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from engine.errors import EngineError
from engine.generate.avatar import Avatar
from engine.generate.streaming import StreamConfig, StreamingGenerator
from realtime.adaptive import AdaptiveSteps
from realtime.clock import SAMPLE_RATE, SAMPLES_PER_FRAME, TICK_SAMPLES, Playout, Segment, Tick
from realtime.config import SessionConfig
from realtime.errors import BadAudio, RealtimeError

log = logging.getLogger(__name__)
TICK_S = TICK_SAMPLES / SAMPLE_RATE
INPUT_RATES = (8000, 16000, 24000, 32000, 44100, 48000)


class Sink(Protocol):
    """Where a session's media and events go. Every method must return at once (queue, never await)."""

    def video(self, pts: int, rgb: np.ndarray, voiced: bool, wall_s: float) -> None: ...

    def audio(self, pcm: np.ndarray, pts: int | None, wall_s: float) -> None: ...

    def event(self, event: dict) -> None: ...


# ------------------------------------------------------------------------------------ worker commands

@dataclass(frozen=True)
class _Push:
    pcm: np.ndarray
    sample_rate: int
    at: float  # monotonic arrival time


@dataclass(frozen=True)
class _EndOfUtterance:
    pass


@dataclass(frozen=True)
class _Interrupt:
    epoch: int


@dataclass(frozen=True)
class _Mark:
    name: str


@dataclass
class _Item:
    epoch: int
    segment: Segment


@dataclass
class _WorkerState:
    """What only the worker thread reads and writes."""

    epoch: int = 0  # the clear this worker has applied last
    flushing: bool = False  # end_of_utterance: pad the tail with silence now
    last_input: float = 0.0  # arrival of the last audio push (monotonic s)
    arrivals: deque[tuple[int, float]] = field(default_factory=deque)  # (samples pushed after, arrival)
    marks: list[tuple[int, str]] = field(default_factory=list)  # (generator sample, name), not yet in a chunk


class SessionStats:
    """What /metrics reports for a session: output fps, audio-in to frame-out latency, steps, drops."""

    def __init__(self) -> None:
        self.frame_times: deque[float] = deque(maxlen=100)
        self.latencies_ms: deque[float] = deque(maxlen=500)
        self.compute_ms: deque[float] = deque(maxlen=100)
        self.frames_sent = 0
        self.dropped_frames = 0  # frames never generated because a live backlog was dropped

    def fps(self, now: float, window_s: float = 2.0) -> float:
        recent = [t for t in self.frame_times if now - t <= window_s]
        return (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 2 and recent[-1] > recent[0] else 0.0

    def latency_ms(self, q: float) -> float | None:
        return float(np.percentile(list(self.latencies_ms), q)) if self.latencies_ms else None


class Session:
    """One avatar conversation. Create, `start()`, feed it, `close()`; `done` is set when it has ended."""

    def __init__(self, session_id: str, generator: StreamingGenerator, reference: torch.Tensor,
                 config: SessionConfig, live: bool = False, portrait: str = ""):
        self.id, self.config, self.live, self.portrait = session_id, config, live, portrait
        self._generator, self._reference = generator, reference
        self.audio_config = generator.audio_config
        self.playout = Playout()
        self.stats = SessionStats()
        self.adaptive = AdaptiveSteps(config.steps, enabled=config.adaptive)
        self.sinks: list[Sink] = []
        self.done = asyncio.Event()
        self.close_reason = ""
        self.last_activity = time.monotonic()
        self.on_close: list[Callable[[Session], object]] = []
        self._epoch = 0
        self._commands: queue.Queue = queue.Queue()
        self._stopping = threading.Event()
        self._chunks: asyncio.Queue[_Item] = asyncio.Queue(maxsize=config.queue_chunks)
        self._put_samples = 0  # written by the worker: audio it has queued
        self._pulled_samples = 0  # written by the loop: audio taken off the queue
        self._input_sent = 0  # written by the loop: input samples (at 16 kHz) handed to the worker
        self._input_taken = 0  # written by the worker: ... and pushed into the generator
        self._playout_buffered = 0  # written by the loop: Playout.buffered_samples, for the worker to read
        self._backlog = 0  # written by the worker: samples pushed into the generator, not yet generated
        self._thread: threading.Thread | None = None
        self._pacer: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.steps = config.steps

    # ------------------------------------------------------------------ control (event loop side)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._work, name=f"session-{self.id}", daemon=True)
        self._thread.start()
        self._pacer = asyncio.create_task(self._pace(), name=f"pacer-{self.id}")

    def push_audio(self, pcm: np.ndarray, sample_rate: int) -> None:
        """Queue mono PCM (int16 or float32) for the generator. Raises BadAudio, naming the problem."""
        if sample_rate not in INPUT_RATES:
            raise BadAudio(f"sample rate {sample_rate} Hz is not supported; use one of {INPUT_RATES}")
        if pcm.ndim != 1 or pcm.dtype not in (np.int16, np.float32):
            raise BadAudio(f"audio must be mono int16 or float32, got {pcm.dtype} {pcm.shape}")
        if pcm.dtype == np.float32 and not np.isfinite(pcm).all():
            raise BadAudio("audio holds NaN or infinite samples")
        samples = len(pcm) * SAMPLE_RATE // sample_rate
        if (self.buffered_s + samples / SAMPLE_RATE) > self.config.max_buffered_audio_s:
            raise BadAudio(f"{self.buffered_s:.1f} s of audio is already waiting; the limit is "
                           f"{self.config.max_buffered_audio_s} s (push no faster than it plays)")
        self._input_sent += samples
        self._command(_Push(pcm, sample_rate, time.monotonic()))

    @property
    def buffered_s(self) -> float:
        """Audio accepted but not yet played: waiting for the worker, in the generator, or generated."""
        ahead = self._put_samples - self._pulled_samples + self.playout.buffered_samples
        return (self._input_sent - self._input_taken + self._backlog + ahead) / SAMPLE_RATE

    def end_of_utterance(self) -> None:
        """The client has sent the whole utterance: generate its tail now rather than wait for more audio."""
        self._command(_EndOfUtterance())

    def mark(self, name: str) -> None:
        """Echo `name` back once the audio pushed before it has played."""
        self._command(_Mark(name))

    def clear(self) -> None:
        """Barge-in: drop everything not yet played; idle from the next chunk on."""
        self._epoch += 1
        events = self.playout.clear()
        while not self._chunks.empty():
            item = self._chunks.get_nowait()
            self._pulled_samples += len(item.segment.audio)
            events += [{"type": "mark", "name": name} for _, name in item.segment.marks]
        self._playout_buffered = 0
        self._command(_Interrupt(self._epoch))
        for e in events:
            self._emit(e)

    def attach(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def detach(self, sink: Sink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)

    async def close(self, reason: str = "closed") -> None:
        """Stop the pacer and the worker; never hangs (the worker is joined with a timeout)."""
        if self._stopping.is_set():
            await self.done.wait()
            return
        self.close_reason = reason
        self._stopping.set()
        self._commands.put(None)
        if self._pacer is not None:
            self._pacer.cancel()
            await asyncio.gather(self._pacer, return_exceptions=True)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
            if self._thread.is_alive():
                log.warning("session %s: worker did not stop within 5 s", self.id)
        for callback in self.on_close:
            try:
                callback(self)
            except Exception:  # a broken observer must not keep the slot taken
                log.exception("session %s: close callback failed", self.id)
        self.done.set()

    def touch(self) -> None:
        """The client is alive (a keepalive): hold off the idle timeout."""
        self.last_activity = time.monotonic()

    def _command(self, command: object) -> None:
        self.touch()
        self._commands.put(command)

    # ------------------------------------------------------------------ pacer (event loop side)

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        t0, n = loop.time(), 0
        try:
            while True:
                delay = t0 + n * TICK_S - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -0.2:  # the loop stalled: rebase rather than burst frames to catch up
                    t0 = loop.time() - n * TICK_S
                self._pull()
                self._publish(self.playout.tick(), n * TICK_S)
                self._playout_buffered = self.playout.buffered_samples
                n += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session %s: pacer failed", self.id)
            asyncio.ensure_future(self.close("internal error"))

    def _pull(self) -> None:
        """Move what the worker made into the playout (where idle segments can be skipped); the worker
        still sees the total ahead of playback and stops generating past `queue_chunks`."""
        while not self._chunks.empty():
            item = self._chunks.get_nowait()
            self._pulled_samples += len(item.segment.audio)
            if item.epoch == self._epoch:
                self.playout.append(item.segment)
            else:  # made before a clear: never plays, but its marks are owed
                for _, name in item.segment.marks:
                    self._emit({"type": "mark", "name": name})

    def _publish(self, tick: Tick, wall_s: float) -> None:
        now = time.monotonic()
        if tick.started is not None:
            seg = tick.started
            latency = (now - seg.input_at) * 1000 if seg.input_at is not None else None
            if latency is not None:
                self.stats.latencies_ms.append(latency)
            self.stats.compute_ms.append(seg.compute_s * 1000)
            self._emit({"type": "stats", "steps": seg.steps, "compute_ms": round(seg.compute_s * 1000, 1),
                        "latency_ms": None if latency is None else round(latency, 1),
                        "buffer_ms": round(self.buffered_s * 1000), "underruns": self.playout.underruns,
                        "dropped_frames": self.stats.dropped_frames})
        for sink in list(self.sinks):
            sink.audio(tick.audio, tick.audio_pts, wall_s)
            for pts, rgb, voiced in tick.frames:
                sink.video(pts, rgb, voiced, wall_s)
        for _ in tick.frames:
            self.stats.frame_times.append(now)
            self.stats.frames_sent += 1
        for e in tick.events:
            self._emit(e)

    def _emit(self, event: dict) -> None:
        for sink in list(self.sinks):
            sink.event(event)

    # ------------------------------------------------------------------ worker thread

    def _work(self) -> None:
        try:
            self._generate()
        except Exception as err:  # log the unexpected, tell the client, end the session
            log.exception("session %s: generation failed", self.id)
            if not self._stopping.is_set():
                self._to_loop(self._emit, {"type": "error", "code": "internal", "message": str(err), "fatal": True})
                self._to_loop(lambda: asyncio.ensure_future(self.close("generation failed")))

    def _to_loop(self, fn: Callable, *args: object) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def _generate(self) -> None:
        gen = self._generator
        gen.reset(self._reference, seed=self.config.seed)
        w = _WorkerState()
        while not self._stopping.is_set():
            for command in self._next_commands(wait_s=0.005 if gen.ready() else 0.01):
                if command is None:
                    return
                self._apply(command, gen, w)
            self._backlog = gen.pushed - gen.played
            if self.live and (self.adaptive.at_lowest or not self.config.adaptive) and \
                    self._backlog > self.config.live_backlog_s * SAMPLE_RATE:
                # a live source that is behind even at the lowest step: drop its backlog (latency stays bounded)
                self.stats.dropped_frames += self._backlog // SAMPLES_PER_FRAME
                gen.interrupt()
                w.arrivals.clear()
                self._backlog = 0
            if self._should_step(gen, w):
                self._deliver(_Item(w.epoch, self._step(gen, w)))

    def _next_commands(self, wait_s: float) -> list[object]:
        """Every command waiting (after waiting up to `wait_s` for the first), in the order sent."""
        try:
            commands = [self._commands.get(timeout=wait_s)]
        except queue.Empty:
            return []
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                return commands

    def _apply(self, command: object, gen: StreamingGenerator, w: _WorkerState) -> None:
        if isinstance(command, _Push):
            try:
                gen.push_audio(command.pcm, command.sample_rate)
            except EngineError as err:
                self._to_loop(self._emit, {"type": "error", "code": "bad_audio", "message": str(err), "fatal": False})
            self._input_taken += len(command.pcm) * SAMPLE_RATE // command.sample_rate
            w.arrivals.append((gen.pushed, command.at))
            w.last_input = command.at
        elif isinstance(command, _EndOfUtterance):
            w.flushing = True
        elif isinstance(command, _Mark):
            w.marks.append((gen.pushed, command.name))
        elif isinstance(command, _Interrupt):
            gen.interrupt()
            w.epoch, w.flushing = command.epoch, False
            w.arrivals.clear()
            for _, name in w.marks:  # they will never play: owed now
                self._to_loop(self._emit, {"type": "mark", "name": name})
            w.marks = []

    def _should_step(self, gen: StreamingGenerator, w: _WorkerState) -> bool:
        """Real audio if there is enough; else the tail of an utterance; else an idle chunk when playout is
        about to run dry and no input is arriving (a live stream is never padded mid-sentence)."""
        ahead = self._put_samples - self._pulled_samples + self._playout_buffered
        chunk_samples = self.config.chunk_frames * self.audio_config.video_frames_per_latent * SAMPLES_PER_FRAME
        if ahead > (self.config.queue_chunks + 1) * chunk_samples:
            return False  # enough is waiting: wait here, where commands still get through
        if w.flushing and gen.played >= gen.voiced_until:
            w.flushing = False
        idle = ahead < self.config.idle_ahead_s * SAMPLE_RATE and \
            time.monotonic() - w.last_input > self.config.input_gap_s
        return gen.ready() or w.flushing or idle

    def _step(self, gen: StreamingGenerator, w: _WorkerState) -> Segment:
        t0 = time.perf_counter()
        chunk = gen.step(allow_silence=True)
        compute = time.perf_counter() - t0
        assert chunk is not None and chunk.frames is not None
        # latency is measured from the arrival of the audio of the chunk's first frame: the push that
        # brought the sample count past it (the frame also waits for the rest of its chunk and the look-ahead,
        # which is part of what a caller sees)
        first_sample = chunk.first_frame * SAMPLES_PER_FRAME
        while w.arrivals and w.arrivals[0][0] <= first_sample:
            w.arrivals.popleft()
        input_at = w.arrivals[0][1] if w.arrivals and chunk.voiced else None
        end = first_sample + chunk.num_frames * SAMPLES_PER_FRAME
        due = [m for m in w.marks if m[0] <= end]
        w.marks = [m for m in w.marks if m[0] > end]
        audio = np.clip(np.round(chunk.audio * 32768.0), -32768, 32767).astype(np.int16)
        # the opening frame (the portrait) runs no DiT, and the first generated chunk pays for warm-up: neither
        # is a measure
        if gen.frames_written > 1 + self.config.chunk_frames:
            gen.steps = self.steps = self.adaptive.update(compute, chunk.num_frames / self.audio_config.fps)
        self._backlog = gen.pushed - gen.played
        return Segment(chunk.frames.numpy(), audio, chunk.voiced, first_sample, due, chunk.steps, compute, input_at)

    def _deliver(self, item: _Item) -> None:
        """Blocking put into the bounded asyncio.Queue, giving up when the session stops."""
        assert self._loop is not None
        self._put_samples += len(item.segment.audio)
        try:
            future = asyncio.run_coroutine_threadsafe(self._chunks.put(item), self._loop)
        except RuntimeError:
            return
        while not self._stopping.is_set():
            try:
                future.result(timeout=0.1)
                return
            except concurrent.futures.TimeoutError:
                continue
        future.cancel()


def new_generator(avatar: Avatar, config: SessionConfig) -> StreamingGenerator:
    """The session's own generator (KV cache, decoder state) over the avatar's shared weights: the engine's
    eager one, or, with `config.backend`, one whose chunk step (denoise, cache write, decode) runs on that
    backend of exporters.backends (one that cannot run here falls back to eager torch with one log line).
    The backends' step carries no text branch: there the emotion condition is left out."""
    stream = StreamConfig(chunk_frames=config.chunk_frames, window_frames=config.window_frames, steps=config.steps)
    if config.backend is None:
        return avatar.generator(stream, decoder=config.decoder)
    from exporters.backends import choose_backend
    from exporters.chunk_graph import ChunkShape
    from exporters.stream import BackendGenerator

    decoder = avatar.vae if config.decoder == "vae" else avatar.tiny
    if decoder is None:
        raise RealtimeError("this avatar has no tiny decoder; use decoder 'vae'")
    if avatar.model.cfg.text_dim:
        _say_no_text(config.backend)
    # the sink is one latent frame: Avatar.reference encodes one portrait image
    shape = ChunkShape(avatar.latent_hw, sink_frames=1, chunk_frames=config.chunk_frames,
                       window_frames=config.window_frames)
    backend = choose_backend(avatar.device, avatar.model, shape, decoder, name=config.backend)
    return BackendGenerator(avatar.model, backend, stream)


def warm_up(avatar: Avatar, config: SessionConfig) -> int:
    """Run throwaway streams through every step level a session may use (the adaptive levels at or below
    `config.steps`), each past a full window, so that what a backend does once per process -- torch.compile
    of the DiT's blocks, about 15 s per layout on a GPU, and the kernels' first launches -- is done before the
    first caller's chunk instead of in it. Each session still captures its own CUDA graphs (fractions of a
    second). Returns the chunks run."""
    from realtime.config import STEP_LEVELS

    levels = [s for s in STEP_LEVELS if s <= config.steps] if config.adaptive else [config.steps]
    gen = new_generator(avatar, config)
    p = next(avatar.model.parameters())
    g = torch.Generator().manual_seed(config.seed)
    reference = torch.randn(1, avatar.model.cfg.in_dim, 1, *avatar.latent_hw, generator=g).to(p.device, p.dtype)
    # the opening frame, the first generated chunk, the filling ring, a full one
    chunks = config.window_frames // config.chunk_frames + 2
    seconds = (chunks * config.chunk_frames * gen.audio_config.video_frames_per_latent + 4) / gen.audio_config.fps
    rate = gen.audio_config.sample_rate
    pcm = (0.1 * torch.randn(int(seconds * rate), generator=g)).numpy()
    run = 0
    with torch.no_grad():
        for steps in levels:
            gen.reset(reference, seed=config.seed)
            gen.steps = steps
            gen.push_audio(pcm, rate)
            for _ in range(chunks):
                gen.step(allow_silence=True)
                run += 1
    return run


@functools.cache
def _say_no_text(backend: str) -> None:
    log.warning("sessions on backend %r run without the text (emotion) condition: its step has no text branch",
                backend)
