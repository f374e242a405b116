"""espeak-ng through its C API (ctypes): speech with sample-accurate phoneme and word events.

The events come from the synthesiser itself, so phoneme onsets are exact to a few milliseconds (measured:
mean absolute error 2.2 ms against the audio, shared/notes/feasibility.md §1). The library is the Debian one
(`apt-get install espeak-ng`) or the one inside the `espeakng-loader` wheel (`pip install espeakng-loader`).

The C library keeps global state (one voice, one callback, one output buffer per process), so each library
file is initialised once per process and wrapped in one `_Library`, whose lock lets one synthesis run at a
time; `Espeak` objects are cheap handles on it. Part of that state cannot be reset: the phase of the pitch
flutter (wavegen.c's static `Flutter_ix`) carries over from one synthesis to the next, and phoneme lengths
are rounded to glottal cycles, so the same text spoken twice in one process may differ by a cycle (~5–10 ms)
here and there. Events always match the audio they come with; a run is reproducible in a fresh process.
Some voices (the breathy variants such as f3) also draw noise from the C library's `rand()`, which the whole
process shares. `Espeak.fresh()` gives that fresh state without a process: a private copy of the library file,
loaded beside the shared one with its own statics, and `rand()` seeded, so what it speaks depends on nothing spoken
before it (SynthTalk takes one per clip, so a clip is the same whatever the worker count or the order of the clips).

Also here: the SynthTalk voice set with its held-out split (`voice_configs`), and `speak_clip`, which strings
sentences of one voice with pauses into a clip with its mouth curves.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from engine.audio.io import TARGET_RATE, StreamResampler
from engine.data.sentences import SPLITS, check_split, sentences
from engine.data.visemes import MouthTrack, Phoneme, mouth_track
from engine.errors import ConfigError, DataError

INSTALL_HINT = "`apt-get install espeak-ng` (Debian/Ubuntu) or `pip install espeakng-loader`"

# ----------------------------------------------------------------------------- C API (speak_lib.h)

AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
INITIALIZE_DONT_EXIT = 0x8000
EVENT_LIST_TERMINATED, EVENT_WORD, EVENT_SENTENCE, EVENT_END, EVENT_PHONEME = 0, 1, 2, 5, 7
PARAM_RATE, PARAM_VOLUME, PARAM_PITCH, PARAM_RANGE, PARAM_WORDGAP = 1, 2, 3, 4, 7
POS_CHARACTER = 1
CHARS_UTF8 = 1
EE_OK = 0


class _Id(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _Id)]


# int SynthCallback(short *wav, int numsamples, espeak_EVENT *events): return 0 to go on, 1 to abort
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.POINTER(_Event))


def _declare(lib: ctypes.CDLL) -> None:
    """Argument and result types of the functions used, so that ctypes converts and checks them."""
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Terminate.argtypes = []
    lib.espeak_Terminate.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.argtypes = []
    lib.espeak_Synchronize.restype = ctypes.c_int


# ----------------------------------------------------------------------------- voices


@dataclass(frozen=True)
class VoiceConfig:
    """One espeak-ng voice: an English accent, a variant (timbre), and prosody."""

    voice: str = "en-us"  # accent: en-us, en, en-gb-scotland, en-gb-x-rp, ...
    variant: str = ""  # "" for the accent's own, or e.g. "f3", "m2", "klatt3"
    rate: int = 170  # words per minute, 80..450
    pitch: int = 50  # base pitch, 0..99
    pitch_range: int = 50  # intonation range, 0..99
    word_gap: int = 0  # extra pause between words in units of 10 ms, 0..50

    def __post_init__(self) -> None:
        limits = {"rate": (80, 450), "pitch": (0, 99), "pitch_range": (0, 99), "word_gap": (0, 50)}
        for name, (lo, hi) in limits.items():
            if not lo <= getattr(self, name) <= hi:
                raise ConfigError(f"VoiceConfig.{name} = {getattr(self, name)} is outside {lo}..{hi}")
        if not self.voice or "+" in self.voice:
            raise ConfigError(f"VoiceConfig.voice {self.voice!r} must be a plain voice name (see `variant`)")

    @property
    def name(self) -> str:
        """espeak-ng's voice name, variant included ("en-us+f3")."""
        return self.voice + (f"+{self.variant}" if self.variant else "")

    @property
    def key(self) -> str:
        """A short unique name for indexes."""
        return f"{self.name}/r{self.rate}/p{self.pitch}/a{self.pitch_range}/g{self.word_gap}"


ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m5", "m7", "f1", "f2", "f3", "f4", "klatt3")
HELD_OUT_ACCENTS = ("en-us-nyc",)
HELD_OUT_VARIANTS = ("f4",)


def voice_configs(split: str | None = None) -> list[VoiceConfig]:
    """The SynthTalk voice set: 8 English accents × 10 variants, each with its own prosody (rate 130–215
    wpm, pitch 30–70, range 25–90, word gap 0–2), 80 configurations. `split` picks "train" (63) or "eval"
    (17, held out by voice: see `held_out_voice`); None gives all."""
    if split is not None:
        check_split(split)
    out = []
    for accent in ACCENTS:
        for variant in VARIANTS:
            # prosody is a function of the voice's name alone, so adding voices never changes the others
            rng = np.random.default_rng(int(hashlib.sha1(f"{accent}+{variant}".encode()).hexdigest()[:8], 16))
            voice = VoiceConfig(accent, variant, rate=int(rng.integers(130, 216)),
                                pitch=int(rng.integers(30, 71)), pitch_range=int(rng.integers(25, 91)),
                                word_gap=int(rng.choice([0, 0, 1, 2])))
            if split is None or held_out_voice(voice) == (split == SPLITS[1]):
                out.append(voice)
    return out


def held_out_voice(voice: VoiceConfig) -> bool:
    """Held-out voices: every configuration of the variant "f4" and of the accent "en-us-nyc" (17 of 80), so
    evaluation hears a timbre and an accent that training never did."""
    return voice.variant in HELD_OUT_VARIANTS or voice.voice in HELD_OUT_ACCENTS


# ----------------------------------------------------------------------------- utterances


@dataclass(frozen=True)
class Word:
    text: str
    start_s: float


@dataclass
class Utterance:
    """Synthesised speech: float32 mono audio in [-1, 1] at the synthesiser's `sample_rate`, the same at
    16 kHz (resampled by PyAV), and the events, in time order: phonemes (names in `phoneset`) and words."""

    audio: np.ndarray
    sample_rate: int
    audio_16k: np.ndarray
    phonemes: list[Phoneme]
    words: list[Word]
    text: str
    phoneset: str = "espeak"

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate

    def mouth(self, fps: int = 25) -> MouthTrack:
        """The mouth curves of this utterance (`visemes.mouth_track` with default coarticulation)."""
        return mouth_track(self.phonemes, self.seconds, fps, phoneset=self.phoneset)


def resample_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """float32 mono at `sample_rate` → 16 kHz through PyAV (libswresample), whole and delay-compensated."""
    resampler = StreamResampler(sample_rate, TARGET_RATE)
    return np.concatenate([resampler.push(audio), resampler.flush()])


# ----------------------------------------------------------------------------- the library


def find_library() -> tuple[str, str | None]:
    """(library file, parent of its espeak-ng-data folder or None for the library's own): the system
    library first, then the `espeakng-loader` wheel's."""
    path = ctypes.util.find_library("espeak-ng")
    if path:
        return path, None
    try:
        import espeakng_loader  # type: ignore[import-not-found]
    except ImportError:
        raise DataError(f"espeak-ng is not installed: {INSTALL_HINT}") from None
    return espeakng_loader.get_library_path(), os.path.dirname(espeakng_loader.get_data_path())


def loaded_file(name: str) -> str:
    """The file behind a loaded library's `name` (a soname such as libespeak-ng.so.1, or a path), from this
    process's memory map."""
    if os.path.isabs(name):
        return name
    ctypes.CDLL(name)  # loaded, so it appears in the map
    stem = name.split(".so")[0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if os.path.basename(path).startswith(stem + ".so") and os.path.isfile(path):
                return path
    raise DataError(f"cannot find the file of the loaded library {name} in /proc/self/maps: name its file "
                    f"(Espeak(path=...)) to take a fresh copy of it")


class _Library:
    """One initialised espeak-ng library: its global state, the callback, and the buffers it fills."""

    def __init__(self, path: str, data: str | None):
        try:
            self.lib = ctypes.CDLL(path)
        except OSError as err:
            raise DataError(f"cannot load espeak-ng from {path}: {err}; install it: {INSTALL_HINT}") from err
        _declare(self.lib)
        flags = INITIALIZE_PHONEME_EVENTS | INITIALIZE_DONT_EXIT
        self.sample_rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                                      data.encode() if data else None, flags)
        if self.sample_rate <= 0:
            raise DataError(f"espeak-ng at {path} failed to initialise (returned {self.sample_rate}); is its "
                            f"espeak-ng-data folder present? {INSTALL_HINT}")
        self.path = path
        self.lock = threading.Lock()
        self.chunks: list[np.ndarray] = []  # int16 PCM, filled by the callback
        self.events: list[tuple[int, int, int, int, str]] = []  # type, sample, text position, length, name
        self._callback = _SYNTH_CALLBACK(self._on_synth)  # kept alive here: the library holds only a pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _on_synth(self, wav: Any, n: int, events: Any) -> int:
        # runs inside espeak_Synth on the calling thread; copy everything out, espeak reuses its buffers
        if wav and n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            e = events[i]
            name = ""
            if e.type == EVENT_PHONEME:  # the name fills 8 bytes, NUL-terminated when shorter
                name = bytes(e.id.string).split(b"\0")[0].decode("utf-8", "replace")
            self.events.append((e.type, e.sample, e.text_position, e.length, name))
            i += 1
        return 0


_LIBRARIES: dict[str, _Library] = {}  # library file -> its one initialised state in this process
_LIBRARIES_LOCK = threading.Lock()


class Espeak:
    """A handle on espeak-ng: `synthesize(text, voice)` gives audio with phoneme and word events.
    `path` and `data` name a library file and the parent of its espeak-ng-data folder; by default the system
    library, else the `espeakng-loader` wheel's. Handles on one library share it, and syntheses take turns."""

    def __init__(self, path: str | None = None, data: str | None = None):
        if path is None:
            path, data = find_library()
        with _LIBRARIES_LOCK:
            if path not in _LIBRARIES:
                _LIBRARIES[path] = _Library(path, data)
            self._library = _LIBRARIES[path]
        self._copy: str | None = None  # the private file of a fresh handle

    @classmethod
    def fresh(cls, path: str | None = None, data: str | None = None, seed: int = 0) -> "Espeak":
        """A handle on a private copy of the library, in the state a new process starts in, with the process's
        `rand()` seeded by `seed`; `close()` (or a `with` block) unloads it and deletes the copy. What it speaks
        is reproducible while nothing else in the process draws from `rand()` between its syntheses."""
        import tempfile

        if path is None:
            path, data = find_library()
        fd, copy = tempfile.mkstemp(prefix="espeak-ng-", suffix=".so")
        with os.fdopen(fd, "wb") as out, open(loaded_file(path), "rb") as src:
            out.write(src.read())
        self = cls.__new__(cls)
        try:
            self._library = _Library(copy, data)
        except BaseException:
            os.unlink(copy)
            raise
        self._copy = copy
        ctypes.CDLL(None).srand(seed)
        return self

    def close(self) -> None:
        """Unload a fresh handle's private library (a shared one stays loaded for the process)."""
        if self._copy is None:
            return
        import _ctypes

        lib = self._library.lib
        lib.espeak_Terminate()
        _ctypes.dlclose(lib._handle)
        os.unlink(self._copy)
        self._copy = None

    def __enter__(self) -> "Espeak":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sample_rate(self) -> int:
        return self._library.sample_rate

    def synthesize(self, text: str, voice: VoiceConfig = VoiceConfig()) -> Utterance:
        """Speak `text` (plain UTF-8, no SSML) with `voice`; event times are seconds from the start."""
        if not text.strip():
            raise DataError("espeak-ng was given no text to speak")
        lib = self._library
        with lib.lock:
            if lib.lib.espeak_SetVoiceByName(voice.name.encode()) != EE_OK:
                raise DataError(f"espeak-ng has no voice {voice.name!r}; list them with "
                                f"`espeak-ng --voices=en` and `espeak-ng --voices=variant`")
            for param, value in ((PARAM_RATE, voice.rate), (PARAM_PITCH, voice.pitch),
                                 (PARAM_RANGE, voice.pitch_range), (PARAM_WORDGAP, voice.word_gap)):
                lib.lib.espeak_SetParameter(param, value, 0)
            lib.chunks, lib.events = [], []
            data = ctypes.create_string_buffer(text.encode("utf-8"))  # NUL-terminated
            err = lib.lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
            lib.lib.espeak_Synchronize()
            chunks, events = lib.chunks, lib.events
            lib.chunks, lib.events = [], []
        if err != EE_OK:
            raise DataError(f"espeak-ng failed to speak {text[:40]!r} (error {err})")
        sr = lib.sample_rate
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)  # int16 at sr
        audio = pcm.astype(np.float32) / 32768.0
        # `sample` counts from the start of this synthesis; text positions count characters from 1
        phonemes = [Phoneme(name, sample / sr)
                    for kind, sample, _, _, name in events if kind == EVENT_PHONEME]
        words = [Word(text[pos - 1:pos - 1 + length], sample / sr)
                 for kind, sample, pos, length, _ in events if kind == EVENT_WORD and length > 0]
        return Utterance(audio, sr, resample_16k(audio, sr), phonemes, words, text)


# ----------------------------------------------------------------------------- clips for SynthTalk


class SpokenClip(NamedTuple):
    audio: np.ndarray  # float32 mono at 16 kHz, exactly round(seconds · 16000) samples
    mouth: MouthTrack  # ceil(seconds · fps) frames
    text: str  # the sentences spoken, in order
    voice: VoiceConfig


@dataclass(frozen=True)
class PauseConfig:
    lead_s: tuple[float, float] = (0.2, 0.8)  # silence before the first sentence
    between_s: tuple[float, float] = (0.25, 1.2)  # silence between sentences
    long_share: float = 0.15  # share of the gaps that are long silences (the idle face)
    long_s: tuple[float, float] = (1.5, 3.0)
    tries: int = 4  # sentences tried for the last gap before the rest is left silent


def speak_clip(rng: np.random.Generator, seconds: float, split: str = "train", fps: int = 25,
               engine: Espeak | None = None, pauses: PauseConfig = PauseConfig()) -> SpokenClip:
    """Sentences of `split` spoken by one voice of `split`, with silences between them, filling `seconds`.
    Sentences are added while one fits and the rest is silence: a sentence is cut only when it alone is
    longer than the clip."""
    check_split(split)
    if seconds <= 0:
        raise ConfigError(f"a clip needs a positive length, got {seconds} s")
    engine = engine or Espeak()
    voices = voice_configs(split)
    voice = voices[int(rng.integers(len(voices)))]
    total = round(seconds * TARGET_RATE)
    parts = [np.zeros(int(rng.uniform(*pauses.lead_s) * TARGET_RATE), np.float32)]
    phonemes = [Phoneme("_", 0.0)]
    texts: list[str] = []
    misses = 0
    while misses < pauses.tries:
        start_s = sum(len(p) for p in parts) / TARGET_RATE
        if start_s >= seconds:
            break
        u = engine.synthesize(sentences(rng, 1, split)[0], voice)
        spoken_s = len(u.audio_16k) / TARGET_RATE
        if start_s + spoken_s > seconds and texts:
            misses += 1
            continue
        phonemes += [Phoneme(p.name, start_s + p.start_s) for p in u.phonemes]
        phonemes.append(Phoneme("_", start_s + spoken_s))
        texts.append(u.text)
        gap_s = rng.uniform(*(pauses.long_s if rng.random() < pauses.long_share else pauses.between_s))
        parts += [u.audio_16k, np.zeros(int(gap_s * TARGET_RATE), np.float32)]
    audio = np.concatenate(parts)[:total]
    audio = np.pad(audio, (0, total - len(audio)))
    return SpokenClip(audio, mouth_track(phonemes, seconds, fps), " ".join(texts), voice)
