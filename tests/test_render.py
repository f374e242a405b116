"""`talkstream render`: a film of the audio's length with the audio muxed, in constant memory; bad inputs stop
with a clear message and leave no file behind."""
import av
import numpy as np

from clients.cli import main
from engine.generate.avatar import shipped_portraits
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
