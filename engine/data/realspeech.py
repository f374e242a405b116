"""Speech beyond espeak-ng: real recorded prompts aligned to their transcripts, and flite as a second
synthesiser, both turned into phoneme timings and so into mouth curves.

Real speech: Debian's `asterisk-core-sounds-en-g722` holds 568 telephone prompts read by one speaker
(Allison Smith, CC-BY-SA-3.0) as 16 kHz G.722, and `asterisk-core-sounds-en` their transcripts
(`core-sounds-en.txt.gz`, lines such as "agent-loginok: Agent logged in."). Nothing gives their phoneme
timings, so `align` finds them: espeak-ng speaks the transcript, and dynamic time warping (Sakoe & Chiba
1978, the symmetric form with weights 1-2-1) between the MFCCs of the recording and of the synthetic speech
carries espeak's sample-accurate phoneme events onto the recording. It tries a few voices (rates matched to
the recording's speech) and keeps the path of least cost.

How well it worked is checked against the recording itself, each check also run on espeak's own audio to
give its floor: the aligned speech/silence boundaries against an energy voice-activity detector (`vad`; an
alignment is `accepted` when speech onset and offset agree within 100 ms), aligned /s/ onsets against the
frication onsets in the recording, and the path cost against the cost of aligning the recording to another
prompt's text. `python -m engine.data.realspeech` prints these figures for all prompts (about 3 minutes on
one core). The weak point is the end of an utterance: the speaker lengthens phrase-final syllables more than
espeak does, so aligned speech ends a median 40 ms before the VAD says it does.

flite (`flite -voice slt -psdur`, Debian `flite`) prints each phone's end time in ARPAbet; its timings are
rougher than espeak's (about 15 ms mean error on /s/ onsets, shared/notes/feasibility.md §2).
"""
from __future__ import annotations

import gzip
import itertools
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from engine.audio.features import AudioFeatureConfig, log_mel
from engine.audio.io import TARGET_RATE, load_audio
from engine.data.espeak import Espeak, Utterance, VoiceConfig
from engine.data.visemes import ESPEAK, REST, MouthTrack, Phoneme, frame_rms, mouth_track, segments
from engine.errors import AudioError, ConfigError, DataError

SOUNDS_DIRS = (Path("/usr/share/asterisk/sounds/en_US_f_Allison"), Path("/usr/share/asterisk/sounds/en"))
TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
INSTALL_HINT = "apt-get install asterisk-core-sounds-en-g722 asterisk-core-sounds-en"

# ----------------------------------------------------------------------------- the prompts


@dataclass(frozen=True)
class Prompt:
    name: str  # as in the transcript file: "agent-loginok", "digits/7"
    text: str  # the transcript as written
    path: Path  # the .g722 recording

    @property
    def speakable(self) -> str:
        """The transcript as read aloud: bracketed notes dropped, "#" and "*" named as the speaker says."""
        text = re.sub(r"\[[^\]]*\]|\([^)]*\)", " ", self.text)
        text = text.replace("#", " pound ").replace("*", " star ").replace("-", " ")
        return " ".join(text.split())


def find_sounds() -> tuple[Path, Path]:
    """(folder of the .g722 prompts, transcript file), or DataError saying what to install."""
    folder = next((d for d in SOUNDS_DIRS if any(d.glob("*.g722"))), None)
    if folder is None or not TRANSCRIPTS.exists():
        missing = "the G.722 prompts" if folder is None else f"the transcripts ({TRANSCRIPTS})"
        raise DataError(f"real speech needs the asterisk prompts; {missing} are missing: `{INSTALL_HINT}`")
    return folder, TRANSCRIPTS


def prompts() -> list[Prompt]:
    """Every prompt whose transcript has words and whose recording exists (silences and tones left out)."""
    folder, transcripts = find_sounds()
    out = []
    with gzip.open(transcripts, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            name, sep, text = line.partition(":")
            if not sep or line.startswith(";"):
                continue
            prompt = Prompt(name.strip(), text.strip(), folder / f"{name.strip()}.g722")
            if re.search(r"[A-Za-z0-9]", prompt.speakable) and prompt.path.exists():
                out.append(prompt)
    return out


def load_prompt(prompt: Prompt) -> np.ndarray:
    """The recording as float32 mono at 16 kHz (raw G.722 decoded by PyAV)."""
    import av

    try:
        with av.open(str(prompt.path), format="g722") as container:
            pcm = [frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)]
    except (av.FFmpegError, OSError) as err:
        raise AudioError(f"cannot decode {prompt.path}: {err}") from err
    if not pcm:
        raise AudioError(f"{prompt.path} decodes to no samples")
    return np.concatenate(pcm).astype(np.float32) / 32768.0  # G.722 decodes to s16 at 16 kHz


# ----------------------------------------------------------------------------- features and activity


@dataclass(frozen=True)
class AlignConfig:
    voices: tuple[VoiceConfig, ...] = (VoiceConfig("en-us", "f3"), VoiceConfig("en-us", "f2"),
                                       VoiceConfig("en-us", "f5"))
    match_rate: bool = True  # re-speak at the rate that gives the recording's speech duration
    n_mels: int = 40
    n_mfcc: int = 13  # c0 (energy) .. c12, plus their deltas
    pad_s: float = 0.2  # silence added at both ends of both signals, so their ends align freely
    dither: float = 1e-3  # white noise (-60 dBFS) added to both, so digital silence looks like room silence
    vad_floor_db: float = 15.0  # speech is this far above the quiet frames ...
    vad_range_db: float = 45.0  # ... or at most this far below the loudest frame
    min_pause_s: float = 0.15  # silences shorter than this are inside speech (as in visemes)
    accept_s: float = 0.1  # an alignment is accepted when its speech onset and offset agree with the VAD

    def __post_init__(self) -> None:
        if not self.voices:
            raise ConfigError("AlignConfig.voices is empty; give at least one espeak voice to align with")

    @property
    def features(self) -> AudioFeatureConfig:
        return AudioFeatureConfig(n_mels=self.n_mels, fmin=60.0)

    @property
    def hop_s(self) -> float:
        return self.features.hop_length / TARGET_RATE

    def frame_times(self, count: int) -> np.ndarray:
        """Centre time of each feature frame, in seconds of the unpadded signal."""
        f = self.features
        return (np.arange(count) * f.hop_length + f.win_length / 2) / TARGET_RATE - self.pad_s


def _padded(audio: np.ndarray, cfg: AlignConfig) -> np.ndarray:
    """`pad_s` of silence at both ends, and `dither` white noise over all (a fixed seed: reproducible)."""
    pad = np.zeros(int(cfg.pad_s * TARGET_RATE), np.float32)
    noise = np.random.default_rng(0).standard_normal(len(audio) + 2 * len(pad)).astype(np.float32)
    return np.concatenate([pad, audio, pad]) + cfg.dither * noise


def mfcc(audio: np.ndarray, cfg: AlignConfig) -> np.ndarray:
    """[M, 2·n_mfcc] MFCCs and deltas of padded, dithered 16 kHz audio, standardised per utterance."""
    mel = log_mel(_padded(audio, cfg), cfg.features).numpy()  # [M, n_mels]
    k, n = np.arange(cfg.n_mels), np.arange(cfg.n_mfcc)
    dct = np.cos(np.pi / cfg.n_mels * (k[None, :] + 0.5) * n[:, None])  # DCT-II [n_mfcc, n_mels]
    c = mel.astype(np.float64) @ dct.T  # [M, n_mfcc]
    f = np.concatenate([c, np.gradient(c, axis=0)], 1)  # [M, 2·n_mfcc]
    return (f - f.mean(0)) / (f.std(0) + 1e-8)


def cosine_cost(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, M] cosine distances between the rows of a [N, D] and b [M, D]."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return 1.0 - a @ b.T


def vad(audio: np.ndarray, cfg: AlignConfig = AlignConfig()) -> np.ndarray:
    """Energy voice-activity detector: [M] bool per feature frame of the padded audio (as `mfcc`), speech
    where the frame's energy is `vad_floor_db` above the 10th percentile and within `vad_range_db` of the
    peak; silences shorter than `min_pause_s` are filled."""
    mel = log_mel(_padded(audio, cfg), cfg.features).numpy().astype(np.float64)
    energy = 10 * np.log10(np.exp(mel).sum(1))  # [M] dB
    threshold = max(np.percentile(energy, 10) + cfg.vad_floor_db, energy.max() - cfg.vad_range_db)
    speech = energy > threshold
    idx = np.flatnonzero(speech)
    gap = round(cfg.min_pause_s / cfg.hop_s)
    for a, b in itertools.pairwise(idx):
        if 1 < b - a <= gap:
            speech[a:b] = True
    return speech


# ----------------------------------------------------------------------------- DTW


def dtw(cost: np.ndarray) -> tuple[float, np.ndarray]:
    """Symmetric DTW (Sakoe & Chiba 1978): D[i,j] = min(D[i-1,j-1] + 2c, D[i-1,j] + c, D[i,j-1] + c) with
    c = cost[i, j], from (0, 0) to (N-1, M-1). Returns (D[N-1, M-1] / (N + M), path [L, 2] of (i, j)).
    Each row is one vectorised pass: the run of horizontal steps is a running minimum of a − cumsum(c)."""
    n, m = cost.shape
    acc = np.empty((n, m))
    acc[0] = np.cumsum(cost[0])
    for i in range(1, n):
        c = cost[i]
        a = np.empty(m)  # best arrival at (i, j) from row i-1
        a[0] = acc[i - 1, 0] + c[0]
        a[1:] = np.minimum(acc[i - 1, :-1] + 2 * c[1:], acc[i - 1, 1:] + c[1:])
        s = np.cumsum(c)
        acc[i] = s + np.minimum.accumulate(a - s)
    i, j = n - 1, m - 1
    path = [(i, j)]
    while i > 0 or j > 0:
        if i == 0:
            j -= 1
        elif j == 0:
            i -= 1
        else:
            c = cost[i, j]
            steps = ((acc[i - 1, j - 1] + 2 * c, i - 1, j - 1), (acc[i - 1, j] + c, i - 1, j),
                     (acc[i, j - 1] + c, i, j - 1))
            _, i, j = min(steps)
        path.append((i, j))
    return float(acc[-1, -1] / (n + m)), np.array(path[::-1])


# ----------------------------------------------------------------------------- alignment


@dataclass
class Alignment:
    """A recording with phoneme timings carried over from espeak-ng by DTW, and how well they fit."""

    text: str  # what was spoken
    audio: np.ndarray  # float32 16 kHz
    phonemes: list[Phoneme]  # espeak mnemonics, onsets in the recording's time
    voice: VoiceConfig  # the espeak voice whose path was kept
    cost: float  # DTW cost per step (cosine distance): lower is closer
    onset_error_s: float  # aligned speech onset minus the VAD's
    offset_error_s: float  # aligned speech offset minus the VAD's
    agreement: float  # share of frames where aligned speech/silence equals the VAD's
    accepted: bool  # onset and offset within AlignConfig.accept_s of the VAD

    @property
    def seconds(self) -> float:
        return len(self.audio) / TARGET_RATE

    def mouth(self, fps: int = 25) -> MouthTrack:
        """The recording's mouth curves (`visemes.mouth_track` of the aligned phonemes)."""
        return mouth_track(self.phonemes, self.seconds, fps)


def _speech_span(speech: np.ndarray, times: np.ndarray) -> tuple[float, float]:
    idx = np.flatnonzero(speech)
    return (float(times[idx[0]]), float(times[idx[-1]])) if len(idx) else (float("nan"), float("nan"))


def _warp(u: Utterance, real: np.ndarray, seconds: float, cfg: AlignConfig) -> tuple[float, list[Phoneme]]:
    """DTW of one synthetic utterance against the features of `seconds` of real speech; returns the cost
    and espeak's phonemes moved into the real time."""
    synth = mfcc(u.audio_16k, cfg)
    cost, path = dtw(cosine_cost(real, synth))
    t_real, t_synth = cfg.frame_times(len(real))[path[:, 0]], cfg.frame_times(len(synth))[path[:, 1]]
    # one real time per synthetic frame (the middle of its run), then piecewise-linear between frames
    _, first = np.unique(path[:, 1], return_index=True)
    last = np.append(first[1:], len(path)) - 1
    anchor_real = (t_real[first] + t_real[last]) / 2
    onsets = np.interp([p.start_s for p in u.phonemes], t_synth[first], anchor_real)
    onsets = np.clip(np.maximum.accumulate(onsets), 0.0, seconds)
    return cost, [Phoneme(p.name, float(t)) for p, t in zip(u.phonemes, onsets)]


def align(prompt: Prompt, engine: Espeak | None = None, cfg: AlignConfig = AlignConfig()) -> Alignment:
    """Phoneme timings for a real prompt (see `align_audio`)."""
    return align_audio(load_prompt(prompt), prompt.speakable, engine, cfg)


def align_audio(audio: np.ndarray, text: str, engine: Espeak | None = None,
                cfg: AlignConfig = AlignConfig()) -> Alignment:
    """Phoneme timings for 16 kHz speech of `text`: the best DTW path over `cfg.voices`, checked against
    the VAD."""
    engine = engine or Espeak()
    seconds = len(audio) / TARGET_RATE
    real = mfcc(audio, cfg)
    speech = vad(audio, cfg)
    times = cfg.frame_times(len(speech))
    onset, offset = _speech_span(speech, times)
    best: tuple[float, list[Phoneme], VoiceConfig] | None = None
    for voice in cfg.voices:
        u = engine.synthesize(text, voice)
        if cfg.match_rate:
            synth_speech = vad(u.audio_16k, cfg)
            s_on, s_off = _speech_span(synth_speech, cfg.frame_times(len(synth_speech)))
            if offset > onset and s_off > s_on:
                rate = int(np.clip(voice.rate * (s_off - s_on) / (offset - onset), 80, 450))
                voice = replace(voice, rate=rate)
                u = engine.synthesize(text, voice)
        cost, phonemes = _warp(u, real, seconds, cfg)
        if best is None or cost < best[0]:
            best = (cost, phonemes, voice)
    assert best is not None  # AlignConfig refuses an empty voice list
    cost, phonemes, voice = best
    segs = segments(phonemes, seconds, ESPEAK, cfg.min_pause_s)
    spoken = [s for s in segs if s.viseme != REST]
    aligned_on, aligned_off = (spoken[0].start_s, spoken[-1].end_s) if spoken else (float("nan"),) * 2
    starts = np.array([s.start_s for s in segs])
    index = (np.searchsorted(starts, times, "right") - 1).clip(0)
    aligned_speech = np.array([s.viseme != REST for s in segs], bool)[index]
    on_err, off_err = aligned_on - onset, aligned_off - offset
    inside = (times >= 0) & (times < seconds)
    return Alignment(text, audio, phonemes, voice, cost, on_err, off_err,
                     float(np.mean(aligned_speech[inside] == speech[inside])),
                     bool(abs(on_err) <= cfg.accept_s and abs(off_err) <= cfg.accept_s))


# ----------------------------------------------------------------------------- flite

FLITE_VOICES = ("slt", "kal16", "awb", "rms")  # the built-in voices at 16 kHz (kal is 8 kHz)


def flite_synthesize(text: str, voice: str = "slt") -> Utterance:
    """Speak `text` with flite; phonemes in ARPAbet (`phoneset="arpabet"`) from its `-psdur` phone ends."""
    if voice not in FLITE_VOICES:
        raise DataError(f"unknown flite voice {voice!r}; expected one of {FLITE_VOICES}")
    if shutil.which("flite") is None:
        raise DataError("flite is not installed: `apt-get install flite`")
    if not text.strip():
        raise DataError("flite was given no text to speak")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        run = subprocess.run(["flite", "-voice", voice, "-psdur", "-t", text, "-o", str(wav)],
                             capture_output=True, text=True, timeout=60, check=False)
        if run.returncode != 0 or not wav.exists():
            raise DataError(f"flite failed on {text[:40]!r}: {run.stderr.strip()[:200]}")
        import av

        with av.open(str(wav)) as container:
            sample_rate = container.streams.audio[0].rate
        audio = load_audio(wav, sample_rate)
        audio_16k = audio if sample_rate == TARGET_RATE else load_audio(wav, TARGET_RATE)
    # "pau:0.164 hh:0.255 ax:0.304 ...": each phone and the time it ends
    pairs = [item.rsplit(":", 1) for item in run.stdout.split() if ":" in item]
    ends = [float(t) for _, t in pairs]
    phonemes = [Phoneme(name, start) for (name, _), start in zip(pairs, [0.0] + ends[:-1])]
    return Utterance(audio, sample_rate, audio_16k, phonemes, [], text, phoneset="arpabet")


# ----------------------------------------------------------------------------- quality checks


def fricated(audio: np.ndarray, hop_s: float = 0.001, window_s: float = 0.016,
             cutoff_hz: float = 3500.0) -> tuple[np.ndarray, np.ndarray]:
    """(times [F], fricated [F] bool): where more than half of the energy of 16 kHz audio lies above
    `cutoff_hz` (the frication of /s/), within 50 dB of the loudest frame. 1 ms hop."""
    hop, win = int(hop_s * TARGET_RATE), int(window_s * TARGET_RATE)
    count = 1 + max(0, (len(audio) - win) // hop)
    frames = audio[np.arange(win)[None, :] + hop * np.arange(count)[:, None]] * np.hanning(win)  # [F, win]
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # [F, win/2+1]
    high = power[:, np.fft.rfftfreq(win, 1 / TARGET_RATE) >= cutoff_hz].sum(1)
    total = power.sum(1) + 1e-12
    loud = 10 * np.log10(total) > 10 * np.log10(total.max()) - 50
    return (np.arange(count) * hop + win / 2) / TARGET_RATE, (high / total > 0.5) & loud


def sibilant_onset_errors(phonemes: list[Phoneme], audio: np.ndarray, reach_s: float = 0.08) -> list[float]:
    """For each /s/: its onset minus the nearest frication onset in the audio within `reach_s` (NaN when
    there is none). The same check measured espeak-ng's own events at 2.2 ms (shared/notes/feasibility.md)."""
    times, on = fricated(audio)
    rises = times[1:][on[1:] & ~on[:-1]]
    out = []
    for p in phonemes:
        if p.name.strip("',") == "s":
            near = rises[np.abs(rises - p.start_s) <= reach_s]
            out.append(float(p.start_s - near[np.argmin(np.abs(near - p.start_s))]) if len(near) else np.nan)
    return out


# ----------------------------------------------------------------------------- report


def _abs_ms(values: list[float]) -> tuple[float, float]:
    """Median and 90th percentile of |values| in ms, NaNs left out."""
    a = np.abs(np.asarray(values, np.float64)) * 1000
    a = a[np.isfinite(a)]
    return (float(np.median(a)), float(np.percentile(a, 90))) if len(a) else (float("nan"), float("nan"))


@dataclass
class AlignmentReport:
    prompts: int  # prompts with spoken transcripts
    aligned: int  # accepted alignments
    cost: float  # median DTW cost per step against the prompt's own text
    mismatch_cost: float  # ... against the next prompt's text
    cost_separates: float  # share of prompts whose own text costs less than the other text
    onset_ms: tuple[float, float]  # |aligned − VAD| speech onset: median, 90th percentile
    offset_ms: tuple[float, float]
    agreement: float  # median share of frames where aligned speech/silence equals the VAD's
    envelope_r: float  # median Pearson r of mouth opening and the recording's RMS (aligned prompts)
    sibilant_ms: tuple[float, float]  # |aligned /s/ onset − frication onset in the recording|
    sibilants: int  # /s/ with a frication onset near them
    floor_onset_ms: tuple[float, float]  # the same checks on espeak's own events and audio
    floor_offset_ms: tuple[float, float]
    floor_sibilant_ms: tuple[float, float]

    @property
    def share(self) -> float:
        return self.aligned / max(self.prompts, 1)

    def markdown(self) -> str:
        def ms(x: tuple[float, float]) -> str:
            return f"{x[0]:.0f} / {x[1]:.0f}"
        rows = [
            ("prompts with speech", f"{self.prompts}"),
            ("aligned: speech onset and offset within 100 ms of the VAD's",
             f"{self.aligned} ({100 * self.share:.1f} %)"),
            ("DTW cost per step, own text / another prompt's text",
             (f"{self.cost:.3f} / {self.mismatch_cost:.3f} "
              f"(own text lower for {100 * self.cost_separates:.1f} %)")),
            ("speech onset vs VAD, median / p90 ms (espeak on itself)",
             f"{ms(self.onset_ms)} ({ms(self.floor_onset_ms)})"),
            ("speech offset vs VAD, median / p90 ms (espeak on itself)",
             f"{ms(self.offset_ms)} ({ms(self.floor_offset_ms)})"),
            ("frames where speech/silence agrees with the VAD, median", f"{100 * self.agreement:.1f} %"),
            (f"/s/ onsets vs frication onsets, median / p90 ms, {self.sibilants} /s/ (espeak on itself)",
             f"{ms(self.sibilant_ms)} ({ms(self.floor_sibilant_ms)})"),
            ("mouth opening vs loudness per frame, median Pearson r (aligned prompts)",
             f"{self.envelope_r:.2f}"),
        ]
        return "\n".join(["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def envelope_correlation(alignment: Alignment, fps: int = 25) -> float:
    """Pearson r between the aligned mouth opening and the recording's RMS per video frame."""
    track = alignment.mouth(fps)
    return float(np.corrcoef(track.open, frame_rms(alignment.audio, TARGET_RATE, len(track), fps))[0, 1])


def alignment_report(limit: int | None = None, cfg: AlignConfig = AlignConfig()) -> AlignmentReport:
    """Align the prompts (the first `limit`, or all) and check them as the module docstring says; each
    check also runs on espeak's own events and audio, whose timings are exact, to give its floor."""
    engine = Espeak()
    items = prompts()[:limit]
    results = [align(p, engine, cfg) for p in items]
    mismatch, sibilant, floor_on, floor_off, floor_sibilant = [], [], [], [], []
    for k, (p, r) in enumerate(zip(items, results)):
        other = engine.synthesize(items[(k + 1) % len(items)].speakable, r.voice)
        mismatch.append(_warp(other, mfcc(r.audio, cfg), r.seconds, cfg)[0])
        sibilant += sibilant_onset_errors(r.phonemes, r.audio)
        u = engine.synthesize(p.speakable, cfg.voices[0])
        floor_sibilant += sibilant_onset_errors(u.phonemes, u.audio_16k)
        speech = vad(u.audio_16k, cfg)
        on, off = _speech_span(speech, cfg.frame_times(len(speech)))
        spoken = [s for s in segments(u.phonemes, u.seconds, ESPEAK, cfg.min_pause_s) if s.viseme != REST]
        if spoken:
            floor_on.append(spoken[0].start_s - on)
            floor_off.append(spoken[-1].end_s - off)
    costs = np.array([r.cost for r in results])
    return AlignmentReport(
        prompts=len(results), aligned=sum(r.accepted for r in results), cost=float(np.median(costs)),
        mismatch_cost=float(np.median(mismatch)), cost_separates=float(np.mean(costs < np.array(mismatch))),
        onset_ms=_abs_ms([r.onset_error_s for r in results]),
        offset_ms=_abs_ms([r.offset_error_s for r in results]),
        agreement=float(np.nanmedian([r.agreement for r in results])),
        envelope_r=float(np.nanmedian([envelope_correlation(r) for r in results if r.accepted] or [np.nan])),
        sibilant_ms=_abs_ms(sibilant), sibilants=int(np.isfinite(sibilant).sum()),
        floor_onset_ms=_abs_ms(floor_on), floor_offset_ms=_abs_ms(floor_off),
        floor_sibilant_ms=_abs_ms(floor_sibilant))


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Align the asterisk prompts to their transcripts and report.")
    ap.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    print(alignment_report(ap.parse_args().limit).markdown())
