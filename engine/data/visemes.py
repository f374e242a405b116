"""Phoneme events → visemes → mouth-shape curves per video frame, with coarticulation.

A viseme is a mouth shape shared by the phonemes that look alike: (opening, width, rounding) targets plus two
dominances, how firmly the jaw (opening) and the lips (width, rounding) hold the shape against neighbouring
sounds. Each phone set (espeak-ng mnemonics, ARPAbet for flite) maps its phonemes to the 15 visemes of
`VISEMES`; diphthongs map to two in turn.

Curves (`mouth_track`), in three steps:
  1. segments: one per phoneme; pauses shorter than `rest_after_s` keep the shape before them, longer ones
     are rest.
  2. coarticulation: the dominance model of Cohen & Massaro (1993), "Modeling coarticulation in synthetic
     visual speech", one dominance per parameter: each parameter at time t is the dominance-weighted mean
     of all segment targets,
        F(t) = Σ_s D_s(t)·T_s / Σ_s D_s(t),  D_s(t) = α_s · exp(-(d_s(t) / c)²),
     with d_s the distance from t to segment s (0 inside it: a plateau, so long vowels reach their target),
     and c = `anticipation_s` before the segment, `carryover_s` after it. The mouth thus moves towards a
     sound up to about 2·`anticipation_s` before it (the articulatory lead of roughly 40–80 ms; the
     lip-rounding lead of Benguerel & Cowan 1974 crosses whole consonants), and weak consonants (/t d n k/)
     raise the jaw while their lip shape comes from the vowels around them.
  3. closures: bilabials (/p b m/) and pauses of at least `rest_after_s` multiply the opening by a gate
     that is exactly 0 over the closure and ramps with a raised cosine over `ramp_s`, so the lips really
     shut. A bilabial's closure lasts at least one video frame, so that a frame shows it; a pause shuts the
     mouth `rest_close_s` after the sound stops and opens it `rest_open_s` (60 ms) before the next sound.
Values are sampled at the centre of each video frame, (f + ½)/fps: a frame is an instant, as rendered.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np

from engine.errors import ConfigError

# ----------------------------------------------------------------------------- phoneme events


@dataclass(frozen=True)
class Phoneme:
    """A phoneme event: its name in the synthesiser's phone set (pause names such as "_" are silence) and
    its onset in seconds. The phoneme lasts until the next event's onset."""

    name: str
    start_s: float


# ----------------------------------------------------------------------------- the viseme table


class Viseme(NamedTuple):
    name: str  # the phonemes it stands for
    open: float  # lip/jaw opening, 0 shut .. 1 wide open
    width: float  # lip-corner spread, 0 narrow .. 1 wide, 0.5 neutral
    round: float  # rounding/protrusion, 0 .. 1
    jaw: float  # Cohen–Massaro dominance α of the opening: how firmly it holds against the neighbours
    lips: float  # ... and of the width and rounding


VISEMES: tuple[Viseme, ...] = (
    Viseme("rest", 0.00, 0.50, 0.00, 1.0, 1.0),  # silence
    Viseme("p b m", 0.00, 0.45, 0.10, 0.6, 0.8),  # bilabial closure (the gate shuts it)
    Viseme("f v", 0.10, 0.50, 0.00, 0.9, 0.8),  # lower lip to upper teeth
    Viseme("th dh", 0.20, 0.55, 0.00, 0.7, 0.4),  # tongue between the teeth
    Viseme("t d n l", 0.22, 0.55, 0.00, 0.6, 0.2),  # alveolar: the jaw rises, the lips follow the vowels
    Viseme("s z", 0.12, 0.65, 0.00, 0.8, 0.5),  # teeth close, corners spread
    Viseme("sh zh ch j", 0.20, 0.35, 0.65, 0.8, 0.8),  # protruded
    Viseme("k g ng h", 0.30, 0.50, 0.00, 0.4, 0.2),  # velar and glottal: the lips follow the vowels
    Viseme("r er", 0.22, 0.40, 0.45, 0.5, 0.5),  # slight rounding
    Viseme("w", 0.10, 0.20, 1.00, 0.9, 0.9),  # tight rounding
    Viseme("open a", 0.90, 0.60, 0.00, 0.5, 0.5),  # father, cat, cut
    Viseme("mid e", 0.55, 0.60, 0.00, 0.4, 0.4),  # bed, the
    Viseme("spread i", 0.30, 0.90, 0.00, 0.5, 0.6),  # see, sit, yes
    Viseme("round o", 0.60, 0.30, 0.70, 0.5, 0.6),  # thought, lot, go
    Viseme("round u", 0.30, 0.25, 0.95, 0.5, 0.7),  # food, good
)
(REST, CLOSED, LABIODENTAL, DENTAL, ALVEOLAR, SIBILANT, POSTALVEOLAR, VELAR, R, W, OPEN, MID, SPREAD, ROUND_O,
 ROUND_U) = range(len(VISEMES))


@dataclass(frozen=True)
class PhoneSet:
    """A synthesiser's phone names → viseme ids (two for diphthongs: first half, second half)."""

    name: str
    table: dict[str, tuple[int, ...]]
    pauses: frozenset[str]
    transparent: frozenset[str]  # zero-length markers that carry no shape (espeak's ";" link)
    strip: str  # stress and length marks removed before lookup

    def visemes(self, phoneme: str) -> tuple[int, ...]:
        """Viseme ids of one phoneme: exact name, then without marks, then its longest known prefix
        ("aI3" → "aI"); unknown names fall back to the mid vowel."""
        if phoneme in self.pauses or not phoneme:
            return (REST,)
        if phoneme in self.table:
            return self.table[phoneme]
        p = phoneme.translate({ord(c): None for c in self.strip})
        while p and p not in self.table:
            p = p[:-1]
        return self.table.get(p, (MID,))

    def known(self, phoneme: str) -> bool:
        """Whether a name is a pause, a marker, or in the table once marks are stripped (no fallback)."""
        stripped = phoneme.translate({ord(c): None for c in self.strip})
        return not phoneme or phoneme in self.pauses | self.transparent or stripped in self.table


def _expand(groups: dict[int, str], diphthongs: dict[str, tuple[int, int]]) -> dict[str, tuple[int, ...]]:
    table: dict[str, tuple[int, ...]] = {name: (v,) for v, names in groups.items() for name in names.split()}
    table.update(diphthongs)
    return table


# espeak-ng English mnemonics as its phoneme events name them (stress ' , and length : stripped). Collected
# over all 8 English accents of espeak-ng 1.51 and 1.52 and the sentence grammar; a test checks that none
# falls back.
ESPEAK = PhoneSet(
    "espeak",
    _expand({
        CLOSED: "p b m", LABIODENTAL: "f v", DENTAL: "T D", ALVEOLAR: "t d n l t# t2 d# t[ n- l- @L",
        SIBILANT: "s z", POSTALVEOLAR: "S Z tS dZ", VELAR: "k g N x h ?", R: "r r- 3 VR", W: "w w#",
        OPEN: "a aa A V a# a2", MID: "e E @ @2 @5 @- I# e#", SPREAD: "i I I2 j", ROUND_O: "o O O2 0",
        ROUND_U: "u U",
    }, {
        "aI": (OPEN, SPREAD), "aI2": (OPEN, SPREAD), "aI3": (OPEN, SPREAD), "aU": (OPEN, ROUND_U),
        "aI@": (OPEN, MID), "A@": (OPEN, R), "eI": (MID, SPREAD), "e@": (MID, MID), "i@": (SPREAD, MID),
        "i@3": (SPREAD, MID), "IR": (SPREAD, R), "oU": (ROUND_O, ROUND_U), "OI": (ROUND_O, SPREAD),
        "O@": (ROUND_O, R), "o@": (ROUND_O, R), "U@": (ROUND_U, MID), "ju": (SPREAD, ROUND_U),
    }),
    pauses=frozenset({"_", "_:", "_!", "_;", "_^_"}),
    transparent=frozenset({";"}),
    strip="',:",
)

# ARPAbet as flite prints it (`flite -psdur`), lower case.
ARPABET = PhoneSet(
    "arpabet",
    _expand({
        CLOSED: "p b m", LABIODENTAL: "f v", DENTAL: "th dh", ALVEOLAR: "t d n l dx", SIBILANT: "s z",
        POSTALVEOLAR: "sh zh ch jh", VELAR: "k g ng hh", R: "r er", W: "w", OPEN: "aa ae", MID: "ah ax eh",
        SPREAD: "ih iy y", ROUND_O: "ao", ROUND_U: "uh uw",
    }, {"aw": (OPEN, ROUND_U), "ay": (OPEN, SPREAD), "ey": (MID, SPREAD), "ow": (ROUND_O, ROUND_U),
        "oy": (ROUND_O, SPREAD)}),
    pauses=frozenset({"pau", "sil", "ssil"}),
    transparent=frozenset(),
    strip="012",
)
PHONE_SETS = {p.name: p for p in (ESPEAK, ARPABET)}


def phone_set(name: str) -> PhoneSet:
    if name not in PHONE_SETS:
        raise ConfigError(f"unknown phone set {name!r}; expected one of {sorted(PHONE_SETS)}")
    return PHONE_SETS[name]


def viseme_of(phoneme: str, phoneset: str = "espeak") -> int:
    """The viseme of a phoneme (a diphthong's first one)."""
    return phone_set(phoneset).visemes(phoneme)[0]


# ----------------------------------------------------------------------------- mouth track


@dataclass
class MouthTrack:
    """Mouth curves per video frame, all of length T: `open`, `width` (0.5 neutral) and `round` in [0, 1]
    (float32), `viseme` (int64 index into VISEMES: the segment sounding at the frame), `speaking` (bool: the
    frame's instant lies inside speech, short pauses included)."""

    open: np.ndarray
    width: np.ndarray
    round: np.ndarray
    viseme: np.ndarray
    speaking: np.ndarray
    fps: int

    def __post_init__(self) -> None:
        lengths = {f.name: len(getattr(self, f.name)) for f in fields(self) if f.name != "fps"}
        if len(set(lengths.values())) != 1:
            raise ConfigError(f"MouthTrack curves must have one length, got {lengths}")

    def __len__(self) -> int:
        return len(self.open)

    @property
    def seconds(self) -> float:
        return len(self) / self.fps

    @staticmethod
    def concat(tracks: Sequence[MouthTrack]) -> MouthTrack:
        if len({t.fps for t in tracks}) != 1:
            raise ConfigError(f"cannot join tracks of frame rates {sorted({t.fps for t in tracks})}")
        def join(name: str) -> np.ndarray:
            return np.concatenate([getattr(t, name) for t in tracks])
        return MouthTrack(join("open"), join("width"), join("round"), join("viseme"), join("speaking"),
                          tracks[0].fps)


@dataclass(frozen=True)
class CoarticulationConfig:
    anticipation_s: float = 0.045  # reach of a segment's dominance before its onset (Gaussian scale)
    carryover_s: float = 0.02  # reach of a segment's dominance after its end
    ramp_s: float = 0.03  # raised-cosine ramp of a closure gate, on each side
    rest_after_s: float = 0.15  # pauses at least this long close the mouth; shorter ones hold the shape
    rest_close_s: float = 0.08  # in such a pause the lips are shut from this long after its onset ...
    rest_open_s: float = 0.06  # ... until this long before the next sound (the mouth opens before it)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"CoarticulationConfig.{f.name} = {value} s is outside (0, 1]")


class Segment(NamedTuple):
    start_s: float
    end_s: float
    viseme: int


def segments(phonemes: Sequence[Phoneme], duration_s: float, phones: PhoneSet = ESPEAK,
             rest_after_s: float = CoarticulationConfig.rest_after_s) -> list[Segment]:
    """Viseme segments tiling [0, duration_s): rest before the first event and in long pauses; a short pause
    inside speech extends the shape before it; diphthongs split in two halves; markers (such as espeak's
    ";") belong to the phoneme before them; zero-length events are dropped."""
    phonemes = [p for p in phonemes if p.name not in phones.transparent]
    raw = [Segment(0.0, phonemes[0].start_s if phonemes else duration_s, REST)]
    for k, ph in enumerate(phonemes):
        end = min(phonemes[k + 1].start_s if k + 1 < len(phonemes) else duration_s, duration_s)
        if end <= ph.start_s:
            continue
        ids = phones.visemes(ph.name)
        edges = [ph.start_s + (end - ph.start_s) * i / len(ids) for i in range(len(ids))] + [end]
        raw += [Segment(a, b, v) for a, b, v in zip(edges[:-1], edges[1:], ids)]
    joined: list[Segment] = []  # consecutive pauses are one pause
    for seg in raw:
        if seg.end_s <= seg.start_s:
            continue
        if joined and seg.viseme == REST and joined[-1].viseme == REST:
            joined[-1] = joined[-1]._replace(end_s=seg.end_s)
        else:
            joined.append(seg)
    out: list[Segment] = []
    for seg in joined:
        short = seg.viseme == REST and seg.end_s - seg.start_s < rest_after_s and seg.end_s < duration_s
        if out and short and out[-1].viseme != REST:
            out[-1] = out[-1]._replace(end_s=seg.end_s)
        else:
            out.append(seg)
    return out


def _raised_cosine_gate(t: np.ndarray, start: float, end: float, ramp_s: float) -> np.ndarray:
    """1 on [start, end], falling to 0 over `ramp_s` on each side along a raised cosine."""
    d = np.maximum(start - t, t - end).clip(min=0.0)
    return np.where(d < ramp_s, 0.5 * (1.0 + np.cos(np.pi * d / ramp_s)), 0.0)


def mouth_track(phonemes: Sequence[Phoneme], duration_s: float, fps: int = 25,
                cfg: CoarticulationConfig = CoarticulationConfig(), phoneset: str = "espeak") -> MouthTrack:
    """Mouth curves for `duration_s` of audio whose phoneme onsets (seconds, sorted) are `phonemes`:
    ceil(duration_s·fps) frames, each sampled at its centre. See the module docstring for the model."""
    segs = segments(phonemes, duration_s, phone_set(phoneset), cfg.rest_after_s)
    frames = int(np.ceil(duration_s * fps - 1e-6))
    t = (np.arange(frames) + 0.5) / fps  # [T] time of each frame
    table = np.array([v[1:] for v in VISEMES], np.float64)  # [V, 5]: open, width, round, jaw, lips α
    # the first segment reaches back forever (rest before the clip), the last one forward (its shape holds)
    starts = np.array([-np.inf] + [seg.start_s for seg in segs[1:]])
    ends = np.array([seg.end_s for seg in segs[:-1]] + [np.inf])

    # Cohen–Massaro blend, asymmetric; each segment counts only within 4 scales of its edges
    num, den = np.zeros((frames, 3)), np.zeros((frames, 3))
    for seg, start, end in zip(segs, starts, ends):
        lo = np.searchsorted(t, start - 4 * cfg.anticipation_s)
        hi = np.searchsorted(t, end + 4 * cfg.carryover_s)
        x = t[lo:hi]
        d = np.where(x < start, (start - x) / cfg.anticipation_s, np.maximum(x - end, 0.0) / cfg.carryover_s)
        dom = table[seg.viseme, [3, 4, 4]] * np.exp(-d**2)[:, None]  # [n, 3]: opening by jaw α, the rest lips
        num[lo:hi] += dom * table[seg.viseme, :3]
        den[lo:hi] += dom
    shape = num / den  # [T, 3]; every instant lies inside a segment, so den ≥ the smallest α
    index = (np.searchsorted(starts, t, "right") - 1).clip(0)  # [T] segment sounding at each frame
    viseme = np.array([seg.viseme for seg in segs], np.int64)[index]

    # closures
    shut = np.zeros(frames)
    for seg, start, end in zip(segs, starts, ends):
        if seg.viseme == CLOSED:
            start = min(start, end - 1.0 / fps)  # at least one frame, ending at the release
        elif seg.viseme == REST and end - start >= cfg.rest_after_s:
            start, end = start + cfg.rest_close_s, end - cfg.rest_open_s
        else:
            continue
        if end > start:
            shut = np.maximum(shut, _raised_cosine_gate(t, start, end, cfg.ramp_s))
    shape[:, 0] *= 1.0 - shut

    speaking = np.array([seg.viseme != REST for seg in segs], bool)[index]
    return MouthTrack(shape[:, 0].astype(np.float32), shape[:, 1].astype(np.float32),
                      shape[:, 2].astype(np.float32), viseme, speaking, fps)


def frame_rms(audio: np.ndarray, sample_rate: int, frames: int, fps: int = 25) -> np.ndarray:
    """[frames] RMS of the audio over each video frame's interval [f/fps, (f+1)/fps): the loudness envelope
    that mouth opening should follow (zero past the end of the audio)."""
    edges = (np.arange(frames + 1) * sample_rate / fps).round().astype(int)
    power = np.concatenate([[0.0], np.cumsum(np.asarray(audio, np.float64) ** 2)])
    lo, hi = edges[:-1].clip(max=len(audio)), edges[1:].clip(max=len(audio))
    return np.sqrt((power[hi] - power[lo]) / np.maximum(edges[1:] - edges[:-1], 1))
