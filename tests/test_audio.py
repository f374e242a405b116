"""Audio: PyAV decoding/resampling and log-mel windows, streaming equal to whole-clip."""
import io

import av
import numpy as np
import pytest
import torch

from engine.audio.features import (AudioFeatureConfig, StreamingAudioFeatures, latent_audio_windows, log_mel,
                                   samples_needed, window_end)
from engine.audio.io import StreamResampler, load_audio
from engine.errors import AudioError

CFG = AudioFeatureConfig()


def tone(freq, seconds, rate):
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x, rate):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spec) * rate / len(x)


def write_audio(path, samples, rate, codec="pcm_s16le", fmt=None):
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray((samples[None] * 32767).astype(np.int16), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


@pytest.mark.parametrize("rate", [8000, 24000, 44100, 48000])
def test_stream_resampler_keeps_pitch_and_length(rate):
    x = tone(440, 1.0, rate)
    r = StreamResampler(rate)
    rng = np.random.default_rng(0)
    out, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 2000))
        out.append(r.push(x[i:i + n]))
        i += n
    out.append(r.flush())
    y = np.concatenate(out)
    assert abs(len(y) - 16000) <= 32
    assert abs(peak_hz(y, 16000) - 440) < 3


def test_int16_and_bad_pcm():
    r = StreamResampler(16000)
    assert np.allclose(r.push(np.array([16384, -32768], np.int16)), [0.5, -1.0])
    for bad in (np.zeros((2, 10), np.float32), np.zeros(10, np.int32), [0.0, 1.0]):
        with pytest.raises(AudioError):
            r.push(bad)
    with pytest.raises(AudioError, match="outside"):
        StreamResampler(100)


def test_load_audio_wav_and_ogg(tmp_path):
    x = tone(300, 0.5, 48000)
    write_audio(tmp_path / "a.wav", x, 48000)
    y = load_audio(tmp_path / "a.wav")
    assert abs(len(y) - 8000) <= 32 and abs(peak_hz(y, 16000) - 300) < 3
    write_audio(tmp_path / "a.ogg", x, 48000, codec="libopus")
    y = load_audio(tmp_path / "a.ogg")
    assert abs(peak_hz(y, 16000) - 300) < 3


def test_load_audio_refuses_garbage(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00not really a wave file" * 10)
    for name in ("empty.wav", "junk.wav", "missing.wav"):
        with pytest.raises(AudioError):
            load_audio(tmp_path / name)
    with pytest.raises(AudioError):
        load_audio(io.BytesIO(b"\x00" * 100))


def test_window_arithmetic():
    assert CFG.mel_frames_per_video_frame == 4 and CFG.window_mel_frames == 24
    # latent 0 ends with video frame 0 (40 ms) + 40 ms look-ahead; latent 1 with video frame 4 (200 ms)
    assert window_end(0, CFG) * 10 == 80 and window_end(1, CFG) * 10 == 240
    assert samples_needed(1, CFG) == (8 - 1) * 160 + 400


def test_silence_is_the_floor_and_speech_is_not():
    assert torch.allclose(log_mel(np.zeros(4000)), torch.tensor(CFG.silence))
    assert log_mel(tone(500, 0.2, 16000)).max() > CFG.silence + 10


def test_streaming_windows_equal_whole_clip_windows():
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(16000 * 3) * np.repeat(rng.random(300), 160)).astype(np.float32)
    n_latent = 17
    whole = latent_audio_windows(log_mel(audio), n_latent)
    stream = StreamingAudioFeatures(CFG)
    got, i = [], 0
    while len(got) < n_latent:
        n = int(rng.choice([1, 7, 50, 333, 1600, 4000]))
        stream.push(audio[i:i + n])
        i += n
        ready = min(stream.ready_latent_frames(), n_latent - len(got))
        if ready:
            got.extend(stream.pop(ready))
    assert torch.allclose(torch.stack(got), whole, atol=1e-5)


def test_pop_needs_the_audio_and_memory_stays_bounded():
    stream = StreamingAudioFeatures(CFG)
    with pytest.raises(AudioError, match="need"):
        stream.pop(1)
    chunk = tone(200, 0.02, 16000)
    for _ in range(30000):  # 10 minutes in 20 ms chunks
        stream.push(chunk)
        if stream.ready_latent_frames():
            stream.pop(stream.ready_latent_frames())
    assert len(stream.buffer) < 16000 // 2


def test_truncate_forgets_unplayed_audio():
    stream = StreamingAudioFeatures(CFG)
    stream.push(tone(200, 2.0, 16000))
    stream.pop(2)
    stream.truncate(8000)
    assert stream.pushed == 8000
    stream.push(np.zeros(16000, np.float32))
    assert stream.ready_latent_frames() > 0


def test_long_files_are_read_in_pieces_equal_to_the_whole(tmp_path):
    from engine.audio.io import count_samples, read_pieces

    write_audio(tmp_path / "a.wav", tone(300, 2.0, 44100), 44100)
    whole = load_audio(tmp_path / "a.wav")
    assert count_samples(tmp_path / "a.wav") == len(whole)
    pieces = list(read_pieces(tmp_path / "a.wav", 3000, start=5000, end=21001))
    assert [len(p) for p in pieces] == [3000] * 5 + [1001]
    assert np.array_equal(np.concatenate(pieces), whole[5000:21001])  # resampled as one stream, then cut
    with pytest.raises(AudioError, match="cannot read audio"):
        list(read_pieces(tmp_path / "missing.wav", 100))
