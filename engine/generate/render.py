"""Offline films of any length, resumable: the recipe behind `talkstream render` (config -> build -> loop -> save).

    result = render(avatar, [Shot(Path("me.png"), Path("talk.wav"))], "film.mp4",
                    RenderConfig(video=LongVideoConfig(method="fuse")), progress=print_progress)
    print("\\n".join(result.lines()))

For each shot: its sink (the portrait's latent; in multi-shot films also the first shot's portrait and the
last latent frame of the shots before, kept as in-context frames as in Video-In-Context) -> the long-video
method (engine.generate.long_video) fed audio windows read from the file in pieces -> finished latents ->
the streaming decoder -> frames, measured at every join (engine.generate.joins) and written to the current
video segment. Every `checkpoint_s` seconds of film the segment is closed and a checkpoint saved
(engine.generate.resume) -- at positions fixed by the inputs, so a resumed render writes the same segments
as an uninterrupted one. At the end the segments and the audio are joined into the mp4 and the work folder
is removed. Memory is constant in the film's length: a bounded number of latent frames, one audio piece,
one batch of frames.
"""
from __future__ import annotations

import errno
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from engine.audio.features import AudioFeatureConfig, StreamingAudioFeatures, samples_needed
from engine.audio.io import count_samples, read_pieces
from engine.errors import AudioError, ConfigError, RenderError
from engine.generate.avatar import DECODERS, EMOTIONS, Avatar, check_face, load_portrait
from engine.generate.joins import JoinMeter, JoinSummary
from engine.generate.long_video import LongVideo, LongVideoConfig, build_long_video
from engine.generate.mp4 import VideoSegment, assemble
from engine.generate.resume import WorkDir, file_digest, module_digest
from engine.generate.shots import Shot, speak, write_wav
from engine.models.dit import emotion_tokens

Progress = Callable[[float, float, float, float], None]  # (film s done, film s in all, wall s, film s at start)
OnLatents = Callable[[int, int, torch.Tensor], None]  # (shot, first latent frame, latents [1, C, n, h, w])
AUDIO = AudioFeatureConfig()


@dataclass(frozen=True)
class RenderConfig:
    video: LongVideoConfig = LongVideoConfig()
    decoder: str = "vae"
    seed: int = 0
    push_s: float = 2.0  # audio read from the file at a time
    checkpoint_s: float = 10.0  # seconds of film between checkpoints (one video segment each)
    context_shots: int = 1  # multi-shot: the last latent frame of this many earlier shots joins the sink
    anchor_first: bool = True  # multi-shot: the first shot's portrait joins the sink of shots with another one
    measure_joins: bool = True  # colour and identity at every join (identity needs the eval embedder)

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ConfigError(f"unknown decoder {self.decoder!r}; choose one of {list(DECODERS)}")
        if self.push_s <= 0 or self.checkpoint_s <= 0 or self.context_shots < 0:
            raise ConfigError(f"need push_s > 0, checkpoint_s > 0, context_shots >= 0, got {self.push_s}, "
                              f"{self.checkpoint_s}, {self.context_shots}")


def print_progress(done_s: float, total_s: float, wall_s: float, start_s: float = 0.0) -> None:
    """A one-line progress bar with speed and ETA, on stderr."""
    share = done_s / max(total_s, 1e-9)
    speed = (done_s - start_s) / max(wall_s, 1e-9)
    eta = (total_s - done_s) / max(speed, 1e-9)
    bar = "#" * int(30 * share)
    print(f"\r[{bar:<30}] {done_s:7.1f}/{total_s:.1f} s  {speed:.2f}x real time  ETA {eta:6.0f} s",
          end="" if done_s < total_s else "\n", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the plan

@dataclass
class ShotPlan:
    shot: Shot
    image: np.ndarray  # the portrait, uint8 [H, W, 3]
    audio: Path  # the file read (a text shot's speech lives in the work folder)
    start: int  # span in 16 kHz samples
    end: int
    video_frames: int  # ceil(span · fps)
    latent_frames: int  # 1 + ceil((video_frames − 1) / 4)


def _latents_for(video_frames: int) -> int:
    k = AUDIO.video_frames_per_latent
    return 1 + math.ceil((video_frames - 1) / k)


def _span(shot: Shot, audio: Path, index: int) -> tuple[int, int]:
    total = count_samples(audio)
    start = round(shot.start_s * AUDIO.sample_rate)
    end = total if shot.end_s is None else min(total, round(shot.end_s * AUDIO.sample_rate))
    if end - start < AUDIO.sample_rate // AUDIO.fps:
        raise AudioError(f"shot {index}: the span {shot.start_s}..{shot.end_s} s of {audio} "
                         f"({total / AUDIO.sample_rate:.2f} s long) holds less than a frame of audio")
    return start, end


def _plan(shot: Shot, audio: Path, image: np.ndarray, index: int) -> ShotPlan:
    start, end = _span(shot, audio, index)
    frames = math.ceil((end - start) * AUDIO.fps / AUDIO.sample_rate)
    return ShotPlan(shot, image, audio, start, end, frames, _latents_for(frames))


def _manifest(avatar: Avatar, shots: list[Shot], config: RenderConfig) -> dict[str, Any]:
    entries = []
    for s in shots:
        entry: dict[str, Any] = {"portrait": file_digest(s.portrait), "start_s": s.start_s, "end_s": s.end_s,
                                 "emotion": s.emotion}
        entry.update({"audio": file_digest(s.audio)} if s.audio is not None else {"text": s.text, "voice": s.voice})
        entries.append(entry)
    decoder = avatar.tiny if config.decoder == "tiny" and avatar.tiny is not None else avatar.vae
    return {"version": 1, "config": asdict(config), "shots": entries, "resolution": avatar.resolution,
            "weights": {"dit": module_digest(avatar.model), "vae": module_digest(avatar.vae),
                        "decoder": module_digest(decoder)}}


# ----------------------------------------------------------------------------- audio, in pieces

class AudioFeed:
    """Audio windows of a shot's consecutive latent frames, from its span of a file read in pieces, then
    silence. The state is the features' buffer and counters, and how much of the span was read."""

    def __init__(self, plan: ShotPlan, piece_samples: int):
        self.plan, self.piece = plan, piece_samples
        self.features = StreamingAudioFeatures(AUDIO)
        self.read = 0  # samples of the span pushed so far
        self._pieces: Iterator[np.ndarray] | None = None

    def windows(self, count: int) -> torch.Tensor:
        """[1, count, window, mels] for the next `count` latent frames."""
        need = samples_needed(self.features.next_latent + count, AUDIO)
        span = self.plan.end - self.plan.start
        while self.features.pushed < need:
            if self.read < span:
                if self._pieces is None:
                    self._pieces = read_pieces(self.plan.audio, self.piece, self.plan.start + self.read, self.plan.end)
                piece = next(self._pieces, None)
                if piece is None:
                    raise AudioError(f"{self.plan.audio} ended early: {self.read} of {span} samples of the span")
                self.read += len(piece)
            else:
                piece = np.zeros(need - self.features.pushed, np.float32)
            self.features.push(piece)
        return self.features.pop(count)[None]

    def state_dict(self) -> dict[str, torch.Tensor]:
        f = self.features
        return {"buffer": torch.from_numpy(f.buffer.copy()),
                "counters": torch.tensor([f.buffer_start, f.pushed, f.next_latent, self.read])}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        f = self.features
        f.buffer = state["buffer"].numpy().copy()
        f.buffer_start, f.pushed, f.next_latent, self.read = (int(v) for v in state["counters"])
        self._pieces = None  # reopened at the span position on the next read


def film_audio(plans: list[ShotPlan], piece_samples: int) -> Iterator[np.ndarray]:
    """The film's soundtrack in pieces: each shot's span, cut or padded with silence to its frames."""
    spf = AUDIO.sample_rate // AUDIO.fps
    for plan in plans:
        want, given = plan.video_frames * spf, 0
        for piece in read_pieces(plan.audio, piece_samples, plan.start, plan.end):
            piece = piece[:want - given]
            given += len(piece)
            yield piece
        if given < want:
            yield np.zeros(want - given, np.float32)


# ----------------------------------------------------------------------------- the result

@dataclass
class RenderResult:
    seconds: float
    frames: int
    wall_s: float  # this run's wall time
    real_time_factor: float  # film seconds made by this run per wall second
    resumed_from_s: float  # film seconds already made when this run started (0: a fresh render)
    joins: JoinSummary
    held_latent_frames_max: int  # the most latent frames the method held at once
    audio_samples_held_max: int  # the most audio samples the features held at once
    checkpoints: int

    def lines(self) -> list[str]:
        start = f", resumed at {self.resumed_from_s:.1f} s" if self.resumed_from_s else ""
        return ([f"{self.seconds:.1f} s, {self.frames} frames, {self.real_time_factor:.2f}x real time{start}; "
                 f"held at most {self.held_latent_frames_max} latent frames and {self.audio_samples_held_max} audio "
                 f"samples; {self.checkpoints} checkpoints"] + self.joins.lines())


# ----------------------------------------------------------------------------- the render

class _Run:
    """The state of one render: counters, the current shot's pieces, the segment being written."""

    def __init__(self, avatar: Avatar, plans: list[ShotPlan], config: RenderConfig, work: WorkDir,
                 meter: JoinMeter):
        self.avatar, self.plans, self.config, self.work, self.meter = avatar, plans, config, work, meter
        self.fps = AUDIO.fps
        self.checkpoint_frames = max(1, round(config.checkpoint_s * self.fps))
        self.shot = 0
        self.fed = self.latents_done = self.frames_done = 0  # in the current shot
        self.film_frames = 0
        self.segments = 0
        self.checkpoints = 0
        self.held_max = self.audio_held_max = 0
        self.context: torch.Tensor | None = None  # [1, C, k, h, w] last latent frame of earlier shots
        self.last_latent: torch.Tensor | None = None  # [1, C, 1, h, w] of the current shot
        self.saved_frames = 0  # film frames covered by the last checkpoint
        self.threads = torch.get_num_threads()  # CPU threads the render runs with (kept across resumes)
        self.segment = VideoSegment(work.segment(0), self.fps, avatar.resolution)
        self.first_reference = avatar.reference(plans[0].image)

    # -- building a shot's pieces

    def start_shot(self) -> tuple[LongVideo, torch.Generator, AudioFeed, Any]:
        plan, config, avatar = self.plans[self.shot], self.config, self.avatar
        sink = avatar.reference(plan.image)
        extra = []
        if self.shot and config.anchor_first and not np.array_equal(plan.image, self.plans[0].image):
            extra.append(self.first_reference)
        if self.shot and config.context_shots and self.context is not None:
            extra.append(self.context[:, :, -config.context_shots:])
        sink = torch.cat([sink] + extra, 2)
        model = avatar.model
        text_kv = None
        if model.cfg.text_dim:
            tokens = emotion_tokens(torch.tensor([EMOTIONS.index(plan.shot.emotion)]), model.cfg.text_dim)
            text_kv = model.encode_text(tokens.to(avatar.device))
        generator = torch.Generator(device=avatar.device).manual_seed(config.seed + 1_000_003 * self.shot)
        method = build_long_video(config.video, model, sink, text_kv, generator)
        feed = AudioFeed(plan, max(1, int(config.push_s * AUDIO.sample_rate)))
        decoder = avatar.decoder(config.decoder)
        self.meter.start_shot(plan.image)
        return method, generator, feed, decoder

    # -- checkpoints

    def save(self, pieces: tuple[LongVideo, torch.Generator, AudioFeed, Any] | None) -> None:
        if self.segment.close() is not None:
            self.segments += 1
        tensors: dict[str, torch.Tensor] = {f"joins.{k}": v for k, v in self.meter.state_dict().items()}
        if self.context is not None:
            tensors["context"] = self.context
        if self.last_latent is not None and pieces is not None:
            tensors["last_latent"] = self.last_latent
        if pieces is not None:
            method, generator, feed, decoder = pieces
            tensors.update({f"method.{k}": v for k, v in method.state_dict().items()})
            tensors["rng"] = generator.get_state()
            tensors.update({f"audio.{k}": v for k, v in feed.state_dict().items()})
            tensors.update({f"decoder.{i:04d}": t for i, t in enumerate(decoder.state.slots)})
        meta = {"shot": self.shot, "fed": self.fed, "latents_done": self.latents_done,
                "frames_done": self.frames_done, "film_frames": self.film_frames, "segments": self.segments,
                "checkpoints": self.checkpoints + 1, "held_max": self.held_max, "audio_held_max": self.audio_held_max,
                "threads": torch.get_num_threads()}
        self.work.save(tensors, meta)
        self.checkpoints += 1
        self.saved_frames = self.film_frames
        self.segment = VideoSegment(self.work.segment(self.segments), self.fps, self.avatar.resolution)

    def load(self) -> tuple[LongVideo, torch.Generator, AudioFeed, Any] | None:
        tensors, meta = self.work.load()
        self.shot, self.fed, self.latents_done = meta["shot"], meta["fed"], meta["latents_done"]
        self.frames_done, self.film_frames, self.segments = meta["frames_done"], meta["film_frames"], meta["segments"]
        self.checkpoints, self.held_max, self.audio_held_max = meta["checkpoints"], meta["held_max"], meta["audio_held_max"]
        self.saved_frames = self.film_frames
        # CPU matmul sums depend on the thread count: go on with the one the render began with, so the latents
        # stay bit-identical to an uninterrupted run's
        self.threads = meta.get("threads", torch.get_num_threads())
        self.context = tensors.get("context")
        self.last_latent = tensors.get("last_latent")
        self.segment = VideoSegment(self.work.segment(self.segments), self.fps, self.avatar.resolution)
        pieces = None
        if self.shot < len(self.plans) and (self.fed or self.latents_done):
            pieces = self.start_shot()
            method, generator, feed, decoder = pieces
            method.load_state_dict({k: v.to(self.avatar.device) for k, v in part_of(tensors, "method.").items()})
            generator.set_state(tensors["rng"])
            feed.load_state_dict(part_of(tensors, "audio."))
            decoder.state.slots = [v.to(self.avatar.device) for _, v in sorted(part_of(tensors, "decoder.").items())]
        self.meter.load_state_dict(part_of(tensors, "joins."))
        return pieces

    # -- the loop

    def emit(self, latents: torch.Tensor | None, join: bool, decoder: Any, on_latents: OnLatents | None) -> bool:
        """Decode, measure and write finished latents; True when a checkpoint is due."""
        plan = self.plans[self.shot]
        if latents is None:
            return False
        keep = latents[:, :, :plan.latent_frames - self.latents_done]
        if not keep.shape[2]:
            return False
        if on_latents is not None:
            on_latents(self.shot, self.latents_done, keep)
        frames = decoder.decode(keep).numpy()[:plan.video_frames - self.frames_done]
        self.meter.push(frames, self.shot, join and self.latents_done > 0)
        self.segment.write(frames)
        self.last_latent = keep[:, :, -1:].clone()
        before = self.film_frames // self.checkpoint_frames
        self.latents_done += keep.shape[2]
        self.frames_done += len(frames)
        self.film_frames += len(frames)
        return self.film_frames // self.checkpoint_frames > before


def part_of(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _load_embedder(config: RenderConfig):
    if not config.measure_joins:
        return None
    from engine.errors import CheckpointError
    from engine.eval.readers import load_readers

    try:
        return load_readers()[1]
    except CheckpointError:
        return None  # colour is still measured; identity needs the shipped embedder


def plan_film(shots: list[Shot]) -> list[np.ndarray]:
    """Check every input before anything is written: each portrait decodes and shows a face, each audio file
    decodes to its end (ImageError, AudioError otherwise). Returns the portraits."""
    if not shots:
        raise ConfigError("a film needs at least one shot")
    images = []
    for i, shot in enumerate(shots):
        image = load_portrait(shot.portrait)
        check_face(image, f"portrait of shot {i} ({shot.portrait})" if len(shots) > 1 else f"portrait {shot.portrait}")
        images.append(image)
        if shot.audio is not None:
            _span(shot, shot.audio, i)
    return images


@torch.no_grad()
def render(avatar: Avatar, shots: list[Shot], out: str | Path, config: RenderConfig = RenderConfig(),
           progress: Progress | None = None, on_latents: OnLatents | None = None,
           restart: bool = False) -> RenderResult:
    """Render the shots into one mp4 at `out`, going on from the checkpoint of an earlier run of the same
    inputs if `out`.parts holds one. Bad input raises an EngineError before anything is written; a full disk
    raises RenderError, keeping what was rendered."""
    out = Path(out)
    images = plan_film(shots)
    work = WorkDir(out)
    resuming = work.open(_manifest(avatar, shots, config), restart=restart)
    audio_files = []
    for i, shot in enumerate(shots):
        if shot.audio is None:
            speech = work.root / f"shot-{i:04d}.wav"
            if not speech.exists():
                write_wav(speech, speak(shot.text or "", shot.voice))
            audio_files.append(speech)
        else:
            audio_files.append(shot.audio)
    plans = [_plan(s, a, im, i) for i, (s, a, im) in enumerate(zip(shots, audio_files, images))]
    total_frames = sum(p.video_frames for p in plans)
    run = _Run(avatar, plans, config, work, JoinMeter(_load_embedder(config), len(plans)))
    pieces = run.load() if resuming else None
    threads = torch.get_num_threads()
    if resuming and run.threads != threads:
        torch.set_num_threads(run.threads)
    start_frames, t0 = run.film_frames, time.perf_counter()
    try:
        while run.shot < len(plans):
            plan = plans[run.shot]
            if pieces is None:
                pieces = run.start_shot()
            method, _, feed, decoder = pieces
            due = False
            while run.fed < plan.latent_frames:
                n = method.next_frames
                windows = feed.windows(n).to(avatar.device, next(avatar.model.parameters()).dtype)
                latents = method.advance(windows)
                run.fed += n
                run.held_max = max(run.held_max, method.held_latent_frames)
                run.audio_held_max = max(run.audio_held_max, len(feed.features.buffer))
                due = run.emit(latents, True, decoder, on_latents)
                if progress is not None:
                    progress(run.film_frames / run.fps, total_frames / run.fps, time.perf_counter() - t0,
                             start_frames / run.fps)
                if due and run.fed < plan.latent_frames:
                    run.save(pieces)
            run.emit(method.finish(), False, decoder, on_latents)
            if config.context_shots and run.last_latent is not None:  # in-context frames for the shots to come
                kept = [run.last_latent] if run.context is None else [run.context, run.last_latent]
                run.context = torch.cat(kept, 2)[:, :, -config.context_shots:]
            run.shot += 1
            run.fed = run.latents_done = run.frames_done = 0
            run.last_latent = None
            pieces = None
            run.save(None)
        segments = [work.segment(i) for i in range(run.segments)]
        assemble(segments, film_audio(plans, max(1, int(config.push_s * AUDIO.sample_rate))), out, run.fps,
                 AUDIO.sample_rate)
    except OSError as e:
        run.segment.abort()
        why = "the disk is full" if e.errno == errno.ENOSPC else f"cannot write ({e.strerror or e})"
        raise RenderError(f"{why} at {e.filename or work.root}: the first {run.saved_frames / run.fps:.1f} s of the "
                          f"film ({run.segments} segments and the checkpoint) are kept in {work.root}; free some "
                          "space and run the same command again to go on from there") from e
    except BaseException:
        run.segment.abort()
        raise
    finally:
        torch.set_num_threads(threads)
    work.remove()
    wall = time.perf_counter() - t0
    made = (run.film_frames - start_frames) / run.fps
    return RenderResult(run.film_frames / run.fps, run.film_frames, wall, made / max(wall, 1e-9),
                        start_frames / run.fps, run.meter.summary(), run.held_max, run.audio_held_max, run.checkpoints)
