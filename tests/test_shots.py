"""Multi-shot scripts: the TOML shot list, its errors, and a film of several shots with in-context identity."""
import av
import numpy as np
import pytest

from clients.cli import main
from engine.errors import ConfigError
from engine.generate.avatar import shipped_portraits
from engine.generate.render import RenderConfig, render
from engine.generate.shots import Shot, load_script
from tests.test_render import FAST_METHODS, decoded, speech_file, tiny_avatar

PORTRAITS = list(shipped_portraits().values())


def script(tmp_path, text):
    path = tmp_path / "film.toml"
    path.write_text(text)
    return path


def test_a_script_lists_shots_relative_to_its_folder(tmp_path):
    speech_file(tmp_path / "talk.wav", 2.0)
    shots, options = load_script(script(tmp_path, f"""
[render]
method = "fuse"
seed = 3

[[shot]]
portrait = "{PORTRAITS[0]}"
audio = "talk.wav"
start = 0.5
end = 1.5
emotion = "happy"

[[shot]]
portrait = "{PORTRAITS[1]}"
text = "Hello there."
voice = "en-us+f3"
"""))
    assert options == {"method": "fuse", "seed": 3}
    assert shots[0] == Shot(PORTRAITS[0], tmp_path / "talk.wav", 0.5, 1.5, "happy")
    assert shots[1].text == "Hello there." and shots[1].audio is None and shots[1].voice == "en-us+f3"


@pytest.mark.parametrize("text, message", [
    ("", "lists no shots"),
    ("[[shot]]\nportrait = 'p.png'\naudio = 'a.wav'\nmood = 'x'\n", "unknown keys \\['mood'\\]"),
    ("[[shot]]\nportrait = 'p.png'\n", "an audio file or a text"),
    ("[[shot]]\nportrait = 'p.png'\naudio = 'a.wav'\nemotion = 'bored'\n", "shot 0: unknown emotion"),
    ("[[shot]]\nportrait = 'p.png'\naudio = 'a.wav'\nstart = 'soon'\n", "start must be a number"),
    ("[[shot]]\nportrait = 'p.png'\naudio = 'a.wav'\nstart = 2\nend = 1\n", "0 <= start < end"),
    ("[[shot]\n", "not valid TOML"),
    ("[scene]\n", "unknown tables"),
])
def test_script_errors_name_the_shot_and_the_problem(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_script(script(tmp_path, text))


def test_a_multi_shot_film_keeps_one_identity_and_measures_it_per_shot(tmp_path):
    audio = speech_file(tmp_path / "a.wav", 3.0)
    shots = [Shot(PORTRAITS[0], audio, 0.0, 1.0), Shot(PORTRAITS[1], audio, 1.0, 1.8, "happy"),
             Shot(PORTRAITS[0], None, text="Yes.")]
    seen: dict[tuple[int, int], object] = {}
    result = render(tiny_avatar(), shots, tmp_path / "film.mp4", RenderConfig(video=FAST_METHODS[0]),
                    on_latents=lambda shot, first, x: seen.setdefault((shot, first), x))
    frames, audio_s = decoded(tmp_path / "film.mp4")
    spoken = len(frames) - 25 - 20
    assert len(frames) == result.frames and spoken > 5 and abs(audio_s - len(frames) / 25) < 0.1
    shots_stats = result.joins.shots
    assert [s["frames"] for s in shots_stats] == [25, 20, spoken]
    assert all(-1 <= s["identity_to_portrait"] <= 1 and -1 <= s["identity_to_first_shot"] <= 1 for s in shots_stats)
    assert shots_stats[0]["identity_to_first_shot"] == pytest.approx(1.0)
    assert "shot 2" in "\n".join(result.lines())
    # the in-context frames are what later shots see: without them shot 0 is the same and shot 1 is not
    plain: dict[tuple[int, int], object] = {}
    render(tiny_avatar(), shots[:2], tmp_path / "plain.mp4",
           RenderConfig(video=FAST_METHODS[0], context_shots=0, anchor_first=False),
           on_latents=lambda shot, first, x: plain.setdefault((shot, first), x))
    assert all(np.array_equal(plain[k], seen[k]) for k in plain if k[0] == 0)
    assert not all(np.array_equal(plain[k], seen[k]) for k in plain if k[0] == 1)


def test_talkstream_render_takes_a_script_with_its_options(tmp_path, capsys):
    speech_file(tmp_path / "talk.wav", 1.2)
    path = script(tmp_path, f"""
[render]
decoder = "tiny"
steps = 1

[[shot]]
portrait = "{PORTRAITS[0]}"
audio = "talk.wav"
end = 0.6

[[shot]]
portrait = "{PORTRAITS[2]}"
audio = "talk.wav"
start = 0.6
""")
    out = tmp_path / "film.mp4"
    assert main(["render", "--script", str(path), "--out", str(out), "--device", "cpu", "--method", "fuse"]) == 0
    printed = capsys.readouterr().out
    assert "shot 1:" in printed and "identity to its portrait" in printed
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 15 + 15
    (tmp_path / "bad.toml").write_text("[render]\nstepz = 2\n[[shot]]\nportrait='p.png'\naudio='a.wav'\n")
    assert main(["render", "--script", str(tmp_path / "bad.toml"), "--out", str(out)]) == 2
    assert "unknown options ['stepz']" in capsys.readouterr().err
