"""`talkstream render`: films of the audio's length with the audio muxed, in constant memory, by both methods;
a killed render goes on to the same latents and video; bad inputs and a full disk stop with a clear message and
keep what was rendered."""
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from clients.cli import main
from engine.audio.features import AudioFeatureConfig
from engine.errors import AudioError, ImageError, RenderError
from engine.generate.avatar import Avatar, shipped_portraits
from engine.generate.long_video import LongVideoConfig
from engine.generate.mp4 import VideoSegment
from engine.generate.render import RenderConfig, render
from engine.generate.shots import Shot
from engine.models.dit import DiT, DiTConfig
from engine.models.vae import CausalVAE, vae_config
from tests.test_audio import write_audio


def test_render_writes_the_whole_audio(tmp_path, capsys):
    t = np.arange(int(2.5 * 16000)) / 16000
    write_audio(tmp_path / "a.wav", (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 16000)
    out = tmp_path / "film.mp4"
    portrait = str(next(iter(shipped_portraits().values())))
    assert main(["render", "--portrait", portrait, "--audio", str(tmp_path / "a.wav"), "--out", str(out),
                 "--steps", "1", "--decoder", "tiny", "--device", "cpu"]) == 0
    with av.open(str(out)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(out)) as container:
        audio_s = sum(f.samples for f in container.decode(audio=0)) / 16000
    assert 2.5 * 25 <= frames <= 2.5 * 25 + 4 and abs(audio_s - frames / 25) < 0.1
    assert "ETA" in capsys.readouterr().err


def test_bad_inputs_stop_with_a_message_and_no_file(tmp_path, capsys):
    (tmp_path / "noise.wav").write_bytes(b"RIFF not really a wave file")
    portrait = str(next(iter(shipped_portraits().values())))
    out = tmp_path / "film.mp4"
    assert main(["render", "--portrait", portrait, "--audio", str(tmp_path / "noise.wav"), "--out", str(out)]) == 2
    assert "cannot read audio" in capsys.readouterr().err
    assert main(["render", "--portrait", str(tmp_path / "none.png"), "--audio", str(tmp_path / "noise.wav"),
                 "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


# ----------------------------------------------------------------------------- long films on a tiny model

AUDIO = AudioFeatureConfig()
PORTRAIT = next(iter(shipped_portraits().values()))


def tiny_avatar(resolution: int = 64) -> Avatar:
    """A random two-layer DiT (emotion tokens included) and the demo VAE at 64x64: fast, deterministic."""
    torch.manual_seed(0)
    z = vae_config("demo").z_dim
    dit = DiT(DiTConfig("tiny", in_dim=z, out_dim=z, dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=8,
                        audio_dim=16, audio_tokens=2, audio_hidden=16,
                        audio_in_dim=AUDIO.window_mel_frames * AUDIO.n_mels)).eval().requires_grad_(False)
    with torch.no_grad():
        for p in dit.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.1)
    return Avatar(dit, CausalVAE(vae_config("demo")).eval().requires_grad_(False), None, False, resolution)


def same_latents(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float rounding: on some CPUs a killed render's child process and this one sum the same
    matmuls in another order (last bits differ, seen 2026-12-05 even with one thread on both sides)."""
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def same_film(a: np.ndarray, b: np.ndarray) -> bool:
    """The same frames once through h264: rounding-level latent differences may flip a pixel level, which the
    encoder spreads over a frame or two (seen: up to 4.5 levels off on average in one frame near a segment join, 0.06 over the film); a
    different frame would be tens of levels off."""
    if a.shape != b.shape:
        return False
    per_frame = np.abs(a.astype(np.int16) - b.astype(np.int16)).reshape(len(a), -1).mean(1)
    return float(per_frame.mean()) < 0.2 and float(per_frame.max()) <= 8


def speech_file(path, seconds, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    write_audio(path, (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32), rate)
    return Path(path)


def decoded(path):
    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(path)) as container:
        audio_s = sum(f.samples for f in container.decode(audio=0)) / 16000
    return frames, audio_s


FAST_METHODS = [LongVideoConfig(window_frames=4),
                LongVideoConfig(method="fuse", model="teacher", steps=3, guidance=2.0, window_frames=4, overlap_frames=1)]


@pytest.mark.parametrize("video", FAST_METHODS, ids=["extend-student", "fuse-teacher"])
def test_both_methods_render_a_playable_film_of_the_audio_in_bounded_memory(tmp_path, video):
    avatar = tiny_avatar()
    held = []
    for seconds in (1.3, 3.1):
        audio = speech_file(tmp_path / f"a{seconds}.wav", seconds, rate=22050)  # resampled as it is read
        out = tmp_path / f"film{seconds}.mp4"
        result = render(avatar, [Shot(PORTRAIT, audio)], out, RenderConfig(video=video, checkpoint_s=1.0, push_s=0.5))
        frames, audio_s = decoded(out)
        assert len(frames) == result.frames == int(np.ceil(seconds * 25)) and abs(audio_s - seconds) < 0.1
        assert frames.shape[1:] == (64, 64, 3) and frames.std() > 1  # a picture, not a blank
        assert result.joins.joins > 0 and result.joins.pairs_within > 0 and "identity" in result.joins.at_joins
        assert not (tmp_path / f"film{seconds}.mp4.parts").exists()  # the work folder goes once the film is done
        held.append((result.held_latent_frames_max, result.audio_samples_held_max))
    # what is held does not grow with the film: the same latent frames for 1.3 s and 3.1 s, within the method's
    # bound, and audio within one piece read and the windows' own audio
    assert held[0][0] == held[1][0] <= video.window_frames + 1 + 2 * video.overlap_frames * (video.steps + 1)
    assert max(held[0][1], held[1][1]) <= 0.5 * 16000 + video.window_frames * 4 * 640


CHILD = """
import os, signal, sys, numpy as np, torch
from pathlib import Path
from tests.test_render import tiny_avatar, PORTRAIT, FAST_METHODS
from engine.generate.render import RenderConfig, render
from engine.generate.shots import Shot
method, kill_after, out, latents = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
torch.set_num_threads(int(sys.argv[5]))
calls = []
def keep(shot, first, x):
    np.save(latents / f"{shot}-{first:05d}.npy", x.numpy())
    calls.append(first)
    if len(calls) == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)  # no clean-up of any kind: as a power cut
render(tiny_avatar(), [Shot(PORTRAIT, out.parent / "a.wav")], out,
       RenderConfig(video=FAST_METHODS[int(method)], checkpoint_s=0.5), on_latents=keep)
"""


def _child(tmp_path, method, kill_after, out, latents):
    latents.mkdir(exist_ok=True)
    args = [str(method), str(kill_after), str(out), str(latents), "1"]  # one CPU thread, whatever the test's
    return subprocess.run([sys.executable, "-c", CHILD, *args],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.mark.parametrize("method", [0, 1], ids=["extend-student", "fuse-teacher"])
def test_a_killed_render_goes_on_to_the_same_latents_and_video(tmp_path, method):
    speech_file(tmp_path / "a.wav", 3.0)
    out = tmp_path / "film.mp4"
    killed = _child(tmp_path, method, 7, out, tmp_path / "first")  # killed between two checkpoints
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists() and (tmp_path / "film.mp4.parts" / "state.safetensors").exists()
    resumed_latents = {}
    result = render(tiny_avatar(), [Shot(PORTRAIT, tmp_path / "a.wav")], out,
                    RenderConfig(video=FAST_METHODS[method], checkpoint_s=0.5),
                    on_latents=lambda s, first, x: resumed_latents.setdefault(first, x.clone()))
    assert result.resumed_from_s > 0 and min(resumed_latents) > 0  # it went on, it did not start again
    # CPU matmul sums depend on the thread count: the resumed render went on with the killed one's (1), and
    # gave this process's back; the uninterrupted run to compare with uses 1 thread too
    threads = torch.get_num_threads()
    straight_latents = {}
    torch.set_num_threads(1)
    try:
        render(tiny_avatar(), [Shot(PORTRAIT, tmp_path / "a.wav")], tmp_path / "straight.mp4",
               RenderConfig(video=FAST_METHODS[method], checkpoint_s=0.5),
               on_latents=lambda s, first, x: straight_latents.setdefault(first, x.clone()))
    finally:
        torch.set_num_threads(threads)
    before_kill = {int(p.stem.split("-")[1]): torch.from_numpy(np.load(p)) for p in (tmp_path / "first").glob("*.npy")}
    for first, x in {**before_kill, **resumed_latents}.items():  # frames made twice (after the last checkpoint) too
        assert same_latents(x, straight_latents[first]), first
    assert set(before_kill) | set(resumed_latents) == set(straight_latents)
    film, audio_s = decoded(out)
    straight, straight_audio_s = decoded(tmp_path / "straight.mp4")
    assert same_film(film, straight) and audio_s == straight_audio_s


def test_a_full_disk_stops_with_a_message_and_keeps_what_was_rendered(tmp_path, monkeypatch):
    audio = speech_file(tmp_path / "a.wav", 3.0)
    out = tmp_path / "film.mp4"
    config = RenderConfig(video=FAST_METHODS[0], checkpoint_s=0.5)
    write = VideoSegment.write
    written = []

    def full_after_40_frames(self, frames):
        written.append(len(frames))
        if sum(written) > 40:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.partial))
        write(self, frames)

    monkeypatch.setattr(VideoSegment, "write", full_after_40_frames)
    with pytest.raises(RenderError, match="disk is full.*kept in.*run the same command again") as err:
        render(tiny_avatar(), [Shot(PORTRAIT, audio)], out, config)
    monkeypatch.setattr(VideoSegment, "write", write)
    parts = sorted(p.name for p in (tmp_path / "film.mp4.parts").iterdir())
    assert "state.safetensors" in parts and "seg-00000.mp4" in parts and not any(".partial" in p for p in parts)
    assert "the first 1.5 s of the film (3 segments" in str(err.value)  # checkpoints at frames 13, 25, 37
    result = render(tiny_avatar(), [Shot(PORTRAIT, audio)], out, config)
    assert result.resumed_from_s > 1.0
    render(tiny_avatar(), [Shot(PORTRAIT, audio)], tmp_path / "straight.mp4", config)
    assert same_film(decoded(out)[0], decoded(tmp_path / "straight.mp4")[0])


def test_bad_inputs_and_other_inputs_in_the_work_folder_stop_with_a_message(tmp_path):
    audio = speech_file(tmp_path / "a.wav", 1.0)
    (tmp_path / "bad.wav").write_bytes(b"RIFF not really a wave file")
    blank = tmp_path / "blank.png"
    with av.open(str(blank), "w", format="image2") as c:
        s = c.add_stream("png")
        s.width = s.height = 96
        s.pix_fmt = "rgb24"
        for packet in list(s.encode(av.VideoFrame.from_ndarray(np.full((96, 96, 3), (40, 90, 200), np.uint8),
                                                                  format="rgb24"))) + list(s.encode(None)):
            c.mux(packet)
    out = tmp_path / "film.mp4"
    with pytest.raises(ImageError, match="no face found"):
        render(tiny_avatar(), [Shot(blank, audio)], out)
    with pytest.raises(AudioError, match="cannot read audio"):
        render(tiny_avatar(), [Shot(PORTRAIT, tmp_path / "bad.wav")], out)
    assert not list(tmp_path.glob("film*"))  # nothing written for bad input
    (tmp_path / "film.mp4.parts").mkdir()
    (tmp_path / "film.mp4.parts" / "manifest.json").write_text('{"digest": "other", "inputs": {"config": {"seed": 5}}}')
    with pytest.raises(RenderError, match="other inputs.*config.*--restart"):
        render(tiny_avatar(), [Shot(PORTRAIT, audio)], out)
    render(tiny_avatar(), [Shot(PORTRAIT, audio)], out, restart=True)
    assert out.exists()
