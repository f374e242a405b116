"""The `talkstream` command: info lists presets, stream runs the generator on an audio file."""
import numpy as np
import pytest
import av

from clients.cli import main
from tests.test_audio import write_audio


def test_info_lists_presets_with_parameter_counts(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "wan-1.3b" in out and "1645.5M" in out and "demo" in out


def test_stream_writes_an_mp4_with_the_audio(tmp_path, capsys):
    t = np.arange(16000) / 16000
    write_audio(tmp_path / "a.wav", (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 16000)
    out = tmp_path / "talk.mp4"
    assert main(["stream", "--audio", str(tmp_path / "a.wav"), "--steps", "1", "--decoder", "tiny",
                 "--no-score", "--out", str(out)]) == 0
    with av.open(str(out)) as container:
        video = [f for f in container.decode(video=0)]
    with av.open(str(out)) as container:
        audio_s = sum(f.samples for f in container.decode(audio=0)) / 16000
    assert len(video) >= 25 and video[0].width == 128
    assert abs(audio_s - len(video) / 25) < 0.1  # the audio plays as long as the frames
    assert "real time" in capsys.readouterr().out


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        main(["render-everything"])
