"""The shipped demo model through the README's first command (`talkstream stream`, on the CPU): the avatar's
read mouth opening follows the example audio's true opening, well above what another curve of the same
kind scores (the floor)."""
import numpy as np

from clients.cli import main
from engine.eval.metrics import pearson
from engine.eval.readers import load_readers
from engine.eval.report import evaluate_video
from engine.generate.avatar import ASSETS, shipped_portraits

# Measured 2026-12-07 on this project's CPU: r 0.751 at lag 0 with the ninth version (the command's defaults: tiny
# decoder, 4 steps, seed 0, KV window 2; the eighth version: 0.757, the seventh: 0.736, and 0.717 with window 8; the sixth scored
# 0.771, the fifth 0.694, the fourth 0.609, the third 0.657, the second 0.54); the held-out figures are in
# docs/demo-model.md. The bound leaves room for another CPU's rounding.
MIN_LIP_SYNC = 0.7


def test_readme_stream_speaks_the_example_in_sync(tmp_path, capsys):
    out = tmp_path / "talkstream-demo.mp4"
    assert main(["stream", "--out", str(out), "--threads", "2", "--no-score"]) == 0
    mouth, identity = load_readers()
    portrait = str(next(iter(shipped_portraits().values())))
    report = evaluate_video(str(out), portrait, str(ASSETS / "example.wav"), mouth, identity)
    assert report.frames >= 200 and "example.npz" in report.truth_source
    assert report.lip_sync.correlation >= MIN_LIP_SYNC
    assert abs(report.lip_sync.lag_ms) <= 40  # the target of the model card (measured: 0)
    # the floor: the same read curve against the true curve played backwards (same values, wrong timing)
    n = min(len(report.read_open), len(report.true_open))
    floor = pearson(report.read_open[:n], report.true_open[:n][::-1].copy())
    assert report.lip_sync.correlation > floor + 0.15  # measured with the third version: 0.66 against 0.34
    assert np.percentile(report.read_open, 95) > np.percentile(report.read_open, 5) + 0.05  # the mouth moves
