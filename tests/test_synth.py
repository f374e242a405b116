"""SynthTalk shards: files, index, ground truth, held-out splits, resuming, and the command."""
import json

import numpy as np
import pytest

from clients.cli import main
from engine.data.espeak import held_out_voice, voice_configs
from engine.data.synth import FLITE_SPLIT, held_out_prompt
from engine.data.synth import GROUND_TRUTH, held_out_identity

pytest.importorskip("engine.data.espeak").Espeak  # noqa: B018


def test_synth_writes_resumable_shards_with_ground_truth(tmp_path, capsys):
    out = tmp_path / "st"
    args = ["data", "synth", "--out", str(out), "--clips", "4", "--seconds", "2", "--size", "64",
            "--eval-fraction", "0.5", "--clips-per-shard", "3"]
    assert main(args) == 0
    index = [json.loads(line) for shard in sorted(out.iterdir()) for line in (shard / "index.jsonl").open()]
    assert [r["id"] for r in index] == [0, 1, 2, 3] and len(list(out.iterdir())) == 2
    for r in index:
        shard = out / f"shard-{r['id'] // 3:05d}"
        gt = np.load(shard / f"clip-{r['id']:06d}.npz")
        for key in GROUND_TRUTH:
            assert len(gt[key]) == r["frames"] == 50, key
        assert gt["face_mask"].shape == (50, 64, 64)
        if r["source"] == "espeak":
            voice = next(v for v in voice_configs() if v.key == r["voice"])
            assert held_out_voice(voice) == (r["split"] == "eval")
        elif r["source"] == "flite":
            assert r["voice"].split("/")[1] in FLITE_SPLIT[r["split"]]
        else:
            assert held_out_prompt(r["voice"].split("/", 1)[1]) == (r["split"] == "eval")
        assert held_out_identity(r["identity_id"]) == (r["split"] == "eval")
        assert (shard / f"clip-{r['id']:06d}.mp4").stat().st_size > 1000
    assert {r["split"] for r in index} == {"train", "eval"}
    assert main(args) == 0  # nothing left to do
    assert "0 clips written" in capsys.readouterr().out.splitlines()[-1]


def test_clips_do_not_depend_on_the_worker_count(tmp_path):
    """Each clip speaks through a fresh espeak-ng, so one worker and two make the same audio and mouth curves."""
    from engine.data.synth import synthesize_dataset

    for workers in (1, 2):  # recorded speech too: its alignment speaks the prompt in breathy voices (rand)
        synthesize_dataset(tmp_path / f"w{workers}", 4, 4.0, 32, seed=11, fmt="raw", workers=workers,
                           sources=("espeak", "real"))
    rows = [json.loads(line) for line in (tmp_path / "w1" / "shard-00000" / "index.jsonl").read_text().splitlines()]
    assert sorted(r["source"] for r in rows) == ["espeak", "espeak", "real", "real"]
    for i in range(4):
        one, two = (np.load(tmp_path / f"w{w}" / "shard-00000" / f"clip-{i:06d}.npz") for w in (1, 2))
        assert np.array_equal(one["audio"], two["audio"]) and np.array_equal(one["mouth_open"], two["mouth_open"])


def test_speech_sources_widen_the_audio(tmp_path):
    """flite and real recorded prompts (aligned by DTW) beside espeak-ng, each clip naming its source."""
    import json

    from engine.data.synth import make_clip, synthesize_dataset
    from engine.data.espeak import Espeak
    from engine.errors import ConfigError

    engine = Espeak()
    for source, prefix in (("flite", "flite/"), ("real", "asterisk/")):
        clip = make_clip(engine, np.random.default_rng(2), 3.0, 64, "train", source=source)
        assert clip.voice.startswith(prefix) and clip.speaking.any() and clip.state.mouth_open.max() > 0.2
    synthesize_dataset(tmp_path, 6, 2.0, 64, seed=4, fmt="raw", sources=("espeak", "flite", "real"))
    rows = [json.loads(line) for line in (tmp_path / "shard-00000" / "index.jsonl").read_text().splitlines()]
    assert {r["source"] for r in rows} <= {"espeak", "flite", "real"} and len(rows) == 6
    with pytest.raises(ConfigError, match="unknown speech sources"):
        synthesize_dataset(tmp_path / "x", 1, 1.0, 64, sources=("festival",))
