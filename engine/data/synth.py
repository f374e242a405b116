"""SynthTalk clips and shards: speech (espeak-ng) → mouth curves → a rendered portrait speaking it, with ground
truth, written as shards a training loader can stream.

Shard layout (one folder per shard of `clips_per_shard` clips):
    shard-00000/clip-000000.mp4   h264 video (yuv420p, CRF 18) + the 16 kHz audio as AAC would lose timing
                                  precision at the ends, so the audio is stored losslessly beside it:
    shard-00000/clip-000000.wav   16 kHz mono s16
    shard-00000/clip-000000.npz   ground truth per frame (see `GROUND_TRUTH`) and the identity vector
    shard-00000/index.jsonl       one line per clip: id, split, voice, text, caption, identity id, frames
Why: mp4 keeps the set small and decodes fast through PyAV; exact ground truth and masks go in compressed
npz (masks compress ~50×); a folder per shard lets loaders stream shard by shard and writers resume.

Raw format (`fmt="raw"`, for the machine that trains): `clip-000000.frames.npy` (uint8 [T, S, S, 3]) and an
uncompressed npz holding the ground truth and the audio. Nothing to decode, so a trainer memory-maps or
loads a few hundred clips in seconds; it is ~20x larger, so it is made where it is used (16 cores render
~1,000 clips a minute) rather than carried.

Speech sources (`sources`, each clip names its own in the index): espeak-ng (75% of clips among those named),
flite (10%; its `rms` voice held out) and real recorded speech, Debian's asterisk prompts with phonemes aligned
by DTW (15%; a tenth of the prompts held out; engine.data.realspeech).

Splits: "train", and "eval" whose clips use held-out voices, held-out sentences and held-out identities.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.data.espeak import Espeak, Phoneme, VoiceConfig, held_out_voice, voice_configs
from engine.data.motion import EXPRESSIONS, FaceState, caption, face_state, sample_motion
from engine.data.portrait import GLASSES, HAIR_STYLES, Identity, RenderOutput, render
from engine.data.sentences import sentences
from engine.data.visemes import mouth_track
from engine.errors import ConfigError

FPS = 25
SAMPLE_RATE = 16000
GROUND_TRUTH = ("mouth_open", "mouth_width", "mouth_round", "viseme", "speaking", "yaw", "pitch", "roll", "tx", "ty",
                "blink", "expression", "mouth_open_drawn", "face_mask", "mouth_mask")


def held_out_identity(identity_id: int, fraction: float = 0.1) -> bool:
    return int(hashlib.sha1(str(identity_id).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


@dataclass
class Clip:
    audio: np.ndarray  # float32 16 kHz
    state: FaceState
    render: RenderOutput
    viseme: np.ndarray
    speaking: np.ndarray
    identity: Identity
    identity_id: int
    voice: str  # the voice's key: an espeak-ng configuration, flite/<voice> or asterisk/<prompt>
    text: str
    caption: str


def describe(identity: Identity) -> str:
    hair = HAIR_STYLES[identity.hair_style]
    parts = ["with no hair" if hair == "bald" else f"with {hair} hair"]
    if GLASSES[identity.glasses] != "none":
        parts.append(f"and {GLASSES[identity.glasses]} glasses")
    return " ".join(parts)


SOURCES = ("espeak", "flite", "real")  # the synthesiser of most clips, a second one, recorded speech
SOURCE_SHARES = {"espeak": 0.75, "flite": 0.10, "real": 0.15}  # of clips, among the sources asked for
FLITE_SPLIT = {"train": ("slt", "awb", "kal16"), "eval": ("rms",)}  # flite's held-out voice


def held_out_prompt(name: str, fraction: float = 0.1) -> bool:
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def speak(engine: Espeak, rng: np.random.Generator, seconds: float, split: str,
          source: str = "espeak") -> tuple[np.ndarray, list[Phoneme], str, str, str]:
    """About `seconds` of 16 kHz speech with pauses: (audio, phonemes, voice key, text, phoneset).
    espeak-ng and flite speak grammar sentences of the split; "real" is one recorded asterisk prompt of the
    split (its phonemes aligned by DTW; prompts whose alignment misses the VAD by > 100 ms are skipped)."""
    t = rng.uniform(0.2, 0.8)  # leading silence
    audio = [np.zeros(int(t * SAMPLE_RATE), np.float32)]
    phonemes: list[Phoneme] = [Phoneme("_", 0.0)]
    texts: list[str] = []
    if source == "real":
        from engine.data.realspeech import align, prompts

        pool = [p for p in prompts() if held_out_prompt(p.name) == (split == "eval")]
        for _ in range(20):
            prompt = pool[int(rng.integers(len(pool)))]
            alignment = align(prompt, engine)
            if alignment.accepted and alignment.seconds < seconds - t:
                break
        phonemes += [Phoneme(p.name, t + p.start_s) for p in alignment.phonemes]
        audio.append(alignment.audio)
        texts.append(alignment.text)
        voice_key, phoneset = f"asterisk/{prompt.name}", "espeak"
    else:
        if source == "flite":
            from engine.data.realspeech import flite_synthesize

            names = FLITE_SPLIT[split]
            flite_voice = names[int(rng.integers(len(names)))]
            voice_key, phoneset = f"flite/{flite_voice}", "arpabet"
        else:
            voices = [v for v in voice_configs() if held_out_voice(v) == (split == "eval")]
            voice = voices[int(rng.integers(len(voices)))]
            voice_key, phoneset = voice.key, "espeak"
        while t < seconds - 1.0:
            text = sentences(rng, 1, split)[0]
            u = flite_synthesize(text, flite_voice) if source == "flite" else engine.synthesize(text, voice)
            samples = u.audio_16k
            phonemes += [Phoneme(p.name, t + p.start_s) for p in u.phonemes]
            audio.append(samples)
            t += len(samples) / SAMPLE_RATE
            pause = rng.uniform(0.25, 1.2)
            phonemes.append(Phoneme("pau" if phoneset == "arpabet" else "_", t))
            audio.append(np.zeros(int(pause * SAMPLE_RATE), np.float32))
            t += pause
            texts.append(text)
    if phoneset == "arpabet":  # the leading silence in flite's name for it
        phonemes[0] = Phoneme("pau", 0.0)
    out = np.concatenate(audio)[: int(seconds * SAMPLE_RATE)]
    out = np.pad(out, (0, int(seconds * SAMPLE_RATE) - len(out)))
    return out, phonemes, voice_key, " ".join(texts), phoneset


def pick_source(rng: np.random.Generator, sources: tuple[str, ...]) -> str:
    shares = np.array([SOURCE_SHARES[s] for s in sources])
    return sources[int(rng.choice(len(sources), p=shares / shares.sum()))]


def make_clip(engine: Espeak, rng: np.random.Generator, seconds: float, size: int, split: str,
              identity_id: int | None = None, source: str = "espeak") -> Clip:
    if identity_id is None:
        while True:
            identity_id = int(rng.integers(2**31))
            if held_out_identity(identity_id) == (split == "eval"):
                break
    identity = Identity.sample(np.random.default_rng(identity_id))
    audio, phonemes, voice, text, phoneset = speak(engine, rng, seconds, split, source)
    track = mouth_track(phonemes, seconds, FPS, phoneset=phoneset)
    expression = int(rng.integers(len(EXPRESSIONS)))
    state = face_state(track.open, track.width, track.round,
                       sample_motion(rng, len(track), FPS, track.speaking, expression))
    return Clip(audio, state, render(identity, state, size), track.viseme, track.speaking, identity, identity_id,
                voice, text, caption(expression, describe(identity)))


# ----------------------------------------------------------------------------- writing

def write_clip(clip: Clip, stem: Path) -> None:
    import av

    frames = clip.render.frames
    with av.open(str(stem.with_suffix(".mp4")), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"crf": "18", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with av.open(str(stem.with_suffix(".wav")), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=SAMPLE_RATE, layout="mono")
        pcm = (np.clip(clip.audio, -1, 1) * 32767).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    s = clip.state
    np.savez_compressed(stem.with_suffix(".npz"), mouth_open=s.mouth_open, mouth_width=s.mouth_width,
                        mouth_round=s.mouth_round, viseme=clip.viseme, speaking=clip.speaking, yaw=s.yaw,
                        pitch=s.pitch, roll=s.roll, tx=s.tx, ty=s.ty, blink=s.blink, expression=s.expression,
                        mouth_open_drawn=clip.render.mouth_open, face_mask=clip.render.face_mask,
                        mouth_mask=clip.render.mouth_mask, identity=clip.identity.vector())


def write_clip_raw(clip: Clip, stem: Path) -> None:
    """The raw format: frames as .npy, ground truth and audio in an uncompressed npz (written atomically)."""
    s = clip.state
    tmp = stem.with_name(stem.name + ".tmp")
    np.save(tmp.with_suffix(".npy"), clip.render.frames)
    np.savez(tmp.with_suffix(".npz"), audio=clip.audio, mouth_open=s.mouth_open, mouth_width=s.mouth_width,
             mouth_round=s.mouth_round, viseme=clip.viseme, speaking=clip.speaking, yaw=s.yaw, pitch=s.pitch,
             roll=s.roll, tx=s.tx, ty=s.ty, blink=s.blink, expression=s.expression,
             mouth_open_drawn=clip.render.mouth_open, face_mask=clip.render.face_mask,
             mouth_mask=clip.render.mouth_mask, identity=clip.identity.vector())
    tmp.with_suffix(".npy").rename(stem.with_suffix(".frames.npy"))
    tmp.with_suffix(".npz").rename(stem.with_suffix(".npz"))


FORMATS = ("mp4", "raw")


def _make_and_write(job: tuple[int, int, float, int, float, str, str, tuple[str, ...]]) -> dict:
    """One clip: its own generator seeded by (seed, index), so any worker makes the same clip."""
    i, seed, seconds, size, eval_fraction, stem, fmt, sources = job
    rng = np.random.default_rng([seed, i])
    split = "eval" if rng.random() < eval_fraction else "train"
    source = pick_source(rng, sources)
    with Espeak.fresh() as engine:  # espeak-ng as a new process has it: the clip owes nothing to the clips before it
        clip = make_clip(engine, rng, seconds, size, split, source=source)
    (write_clip if fmt == "mp4" else write_clip_raw)(clip, Path(stem))
    return {"id": i, "split": split, "source": source, "voice": clip.voice, "text": clip.text,
            "caption": clip.caption, "identity_id": clip.identity_id, "frames": len(clip.state), "size": size,
            "fps": FPS}


def synthesize_dataset(out: str | Path, clips: int, seconds: float, size: int, seed: int = 0,
                       eval_fraction: float = 0.1, clips_per_shard: int = 100, fmt: str = "mp4",
                       workers: int = 1, sources: tuple[str, ...] = ("espeak",)) -> int:
    """Write `clips` clips (a share `eval_fraction` of them in the eval split) into shards under `out`, with
    `workers` processes. Resumable: clips already listed in a shard's index are kept. The same seed gives
    the same clips whatever the number of workers: each clip speaks through a fresh copy of espeak-ng
    (`Espeak.fresh`), whose pitch flutter would otherwise carry over from the clips a worker made before.
    Returns the number of clips written now."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {list(FORMATS)}")
    out = Path(out)
    Espeak()  # fail early, with the install hint, if espeak-ng is missing
    unknown = set(sources) - set(SOURCES)
    if unknown or not sources:
        raise ConfigError(f"unknown speech sources {sorted(unknown)}; choose among {list(SOURCES)}")
    if "real" in sources:
        from engine.data.realspeech import find_sounds

        find_sounds()  # the asterisk prompts, or a DataError saying what to install
    if "flite" in sources and shutil.which("flite") is None:
        raise ConfigError("the flite source needs flite: `apt-get install flite`")
    jobs = []
    for i in range(clips):
        shard = out / f"shard-{i // clips_per_shard:05d}"
        shard.mkdir(parents=True, exist_ok=True)
        index = shard / "index.jsonl"
        if index.exists() and f'"id": {i},' in index.read_text():
            continue
        jobs.append((i, seed, seconds, size, eval_fraction, str(shard / f"clip-{i:06d}"), fmt, tuple(sources)))
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers, initializer=_one_thread) as pool:
            rows = pool.imap_unordered(_make_and_write, jobs)
            return _index(out, rows, clips_per_shard)
    _one_thread()
    return _index(out, map(_make_and_write, jobs), clips_per_shard)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _index(out: Path, rows, clips_per_shard: int) -> int:
    written = 0
    for row in rows:
        with (out / f"shard-{row['id'] // clips_per_shard:05d}" / "index.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        written += 1
    return written
