"""The `talkstream` command: info lists presets, stream runs the generator on an audio file."""
import numpy as np
import pytest
from safetensors.torch import load_file

from clients.cli import main
from tests.test_audio import write_audio


def test_info_lists_presets_with_parameter_counts(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "wan-1.3b" in out and "1645.5M" in out and "demo" in out


def test_stream_writes_latents_for_the_whole_audio(tmp_path, capsys):
    t = np.arange(16000) / 16000
    write_audio(tmp_path / "a.wav", (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 16000)
    out = tmp_path / "latents.safetensors"
    assert main(["stream", "--audio", str(tmp_path / "a.wav"), "--steps", "1", "--out", str(out)]) == 0
    latents = load_file(str(out))["latents"]
    frames = 1 + 4 * (latents.shape[2] - 1)
    assert frames >= 25 and latents.shape[1:2] == (16,)
    assert "real-time factor" in capsys.readouterr().out


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        main(["render-everything"])
