"""Shots of a film, and multi-shot scripts (TOML) that list them.

    # film.toml -- paths are relative to the script's folder
    [render]                      # optional: defaults for `talkstream render`'s flags (flags given win)
    method = "fuse"

    [[shot]]
    portrait = "anna.png"
    audio = "interview.wav"
    start = 12.0                  # seconds into the audio (default 0)
    end = 20.5                    # (default: its end)
    emotion = "happy"             # one of engine.generate.avatar.EMOTIONS (default neutral)

    [[shot]]
    portrait = "anna.png"
    text = "And that is all for today."   # spoken by espeak-ng instead of an audio file
    voice = "en-us+f3"            # espeak-ng voice[+variant] (default en-us)

Every shot is rendered with its own portrait and emotion; the film keeps one identity across shots through
in-context sink frames (engine.generate.render).
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError
from engine.generate.avatar import EMOTIONS

SHOT_KEYS = ("portrait", "audio", "start", "end", "emotion", "text", "voice")


@dataclass(frozen=True)
class Shot:
    portrait: Path
    audio: Path | None = None  # None: speak `text`
    start_s: float = 0.0
    end_s: float | None = None  # None: to the end of the audio
    emotion: str = "neutral"
    text: str | None = None
    voice: str = "en-us"

    def __post_init__(self) -> None:
        if (self.audio is None) == (self.text is None):
            raise ConfigError(f"a shot needs an audio file or a text to speak, not both or neither "
                              f"(portrait {self.portrait})")
        if self.text is not None and not self.text.strip():
            raise ConfigError("a shot's text is empty")
        if self.emotion not in EMOTIONS:
            raise ConfigError(f"unknown emotion {self.emotion!r}; choose one of {list(EMOTIONS)}")
        if self.start_s < 0 or (self.end_s is not None and self.end_s <= self.start_s):
            raise ConfigError(f"a shot's span needs 0 <= start < end, got start {self.start_s}, end {self.end_s}")


def load_script(path: str | os.PathLike[str]) -> tuple[list[Shot], dict[str, Any]]:
    """A TOML shot list -> (shots, the [render] table of option defaults)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read the script {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from e
    unknown = set(data) - {"shot", "render"}
    if unknown:
        raise ConfigError(f"{path}: unknown tables {sorted(unknown)}; a script has [render] and [[shot]] tables")
    raw = data.get("shot")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{path} lists no shots: add [[shot]] tables with portrait and audio (or text)")
    shots = [_shot(entry, i, path.parent) for i, entry in enumerate(raw)]
    options = data.get("render", {})
    if not isinstance(options, dict):
        raise ConfigError(f"{path}: [render] must be a table of option = value")
    return shots, options


def _shot(entry: Any, index: int, folder: Path) -> Shot:
    where = f"shot {index}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a table of {', '.join(SHOT_KEYS)}")
    unknown = set(entry) - set(SHOT_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; a shot takes {', '.join(SHOT_KEYS)}")
    if "portrait" not in entry:
        raise ConfigError(f"{where}: no portrait")

    def number(key: str) -> float | None:
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{where}: {key} must be a number of seconds, got {value!r}")
        return None if value is None else float(value)

    try:
        return Shot(portrait=folder / str(entry["portrait"]),
                    audio=folder / str(entry["audio"]) if "audio" in entry else None,
                    start_s=number("start") or 0.0, end_s=number("end"), emotion=str(entry.get("emotion", "neutral")),
                    text=str(entry["text"]) if "text" in entry else None, voice=str(entry.get("voice", "en-us")))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e


def speak(text: str, voice: str) -> np.ndarray:
    """float32 16 kHz speech of `text` by espeak-ng; `voice` is espeak-ng's voice[+variant] name."""
    from engine.data.espeak import Espeak, VoiceConfig

    name, _, variant = voice.partition("+")
    return Espeak().synthesize(text, VoiceConfig(voice=name, variant=variant)).audio_16k.astype(np.float32)


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int = 16000) -> None:
    """16-bit PCM wav, written beside its name and renamed."""
    import av

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with av.open(str(tmp), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=sample_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray((np.clip(samples, -1, 1) * 32767).astype(np.int16)[None], format="s16",
                                           layout="mono")
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    os.replace(tmp, path)
