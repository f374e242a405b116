"""The SynthTalk pictures in docs/: a sheet of 16 random identities and a strip of frames across one
utterance. `python -m engine.data.docs docs/` regenerates both."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from engine.data.espeak import Espeak, VoiceConfig
from engine.data.motion import face_state, sample_motion
from engine.data.portrait import Identity, render
from engine.data.visemes import mouth_track


def write_png(path: Path, image: np.ndarray) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def identity_sheet(path: Path, seed: int = 7, size: int = 256) -> None:
    rng = np.random.default_rng(seed)
    tiles = []
    for _ in range(16):
        ident = Identity.sample(rng)
        n = 8
        motion = sample_motion(rng, n, 25, np.zeros(n, bool), int(rng.integers(5)))
        state = face_state(np.full(n, 0.35), np.full(n, 0.5), np.zeros(n), motion)
        tiles.append(render(ident, state, size).frames[n // 2])
    rows = [np.concatenate(tiles[i:i + 4], 1) for i in range(0, 16, 4)]
    write_png(path, np.concatenate(rows, 0))


def utterance_strip(path: Path, text: str = "Hello, my name is Sam, and I love bright blue umbrellas.",
                    seed: int = 3, size: int = 192, count: int = 12) -> None:
    u = Espeak().synthesize(text, VoiceConfig("en-us", "f3"))
    track = mouth_track(u.phonemes, u.seconds, 25)
    rng = np.random.default_rng(seed)
    state = face_state(track.open, track.width, track.round,
                       sample_motion(rng, len(track), 25, track.speaking, 1))
    frames = render(Identity.sample(rng), state, size).frames
    picks = np.linspace(2, len(frames) - 3, count).astype(int)
    write_png(path, np.concatenate([frames[i] for i in picks], 1))


def portraits(out: Path, count: int = 4, size: int = 256) -> list[Path]:
    """The shipped portraits: held-out identities (never trained on), neutral, mouth closed, facing front."""
    from engine.data.synth import held_out_identity

    out.mkdir(parents=True, exist_ok=True)
    written, identity_id = [], 0
    while len(written) < count:
        identity_id += 1
        if not held_out_identity(identity_id):
            continue
        n = 1
        still = dict(yaw=np.zeros(n), pitch=np.zeros(n), roll=np.zeros(n), tx=np.zeros(n), ty=np.zeros(n),
                     blink=np.zeros(n), expression=np.zeros(n, int), expression_strength=np.zeros(n))
        state = face_state(np.zeros(n), np.full(n, 0.5), np.zeros(n), still)
        path = out / f"synthtalk-{identity_id}.png"
        write_png(path, render(Identity.sample(np.random.default_rng(identity_id)), state, size).frames[0])
        written.append(path)
    return written


def example_audio(out: Path, seconds: float = 8.0, seed: int = 2026) -> Path:
    """The shipped example: held-out sentences in a held-out voice, with pauses, as example.wav, and its
    ground truth (mouth opening, speaking) as example.npz, so `talkstream eval` can score a render of it."""
    import av

    from engine.data.espeak import speak_clip

    clip = speak_clip(np.random.default_rng(seed), seconds, "eval")
    path = out / "example.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray((np.clip(clip.audio, -1, 1) * 32767).astype(np.int16)[None],
                                           format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    np.savez(out / "example.npz", mouth_open=clip.mouth.open, speaking=clip.mouth.speaking,
             text=np.array(clip.text), voice=np.array(clip.voice.key))
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs")
    out.mkdir(exist_ok=True)
    identity_sheet(out / "synthtalk-identities.png")
    utterance_strip(out / "synthtalk-utterance-strip.png")
    portraits(Path(__file__).resolve().parent.parent / "assets" / "portraits")
    example_audio(Path(__file__).resolve().parent.parent / "assets")
