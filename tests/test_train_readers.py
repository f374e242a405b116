"""The recipe of the eval readers (engine/train/eval_nets.py) on a few SynthTalk clips: both models train,
read VAE round trips when given a VAE, and save their held-out scores with the weights."""
import json

import pytest
import torch
from safetensors import safe_open

from engine.checkpoints.vae import save_vae
from engine.data.synth import synthesize_dataset
from engine.errors import ConfigError
from engine.models.vae import CausalVAE, vae_config
from engine.train.eval_nets import TrainReaderConfig, train


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("readers")
    synthesize_dataset(root / "data", 6, 1.0, 128, seed=11, eval_fraction=0.34, fmt="raw")
    torch.manual_seed(0)
    save_vae(root / "vae.safetensors", CausalVAE(vae_config("demo")))
    return root


@pytest.mark.parametrize("model", ["mouth", "identity"])
def test_reader_trains_with_vae_round_trips_and_saves_its_scores(clips, tmp_path, model):
    cfg = TrainReaderConfig(str(clips / "data"), str(tmp_path / model), model=model, steps=3, batch=4,
                            public_identities=4, eval_clips=2, vae=str(clips / "vae.safetensors"), log_every=1,
                            device="cpu")
    scores = train(cfg)
    with safe_open(str(tmp_path / model / "final.safetensors"), "pt") as f:
        saved = json.loads(f.metadata()["metrics"])
    assert saved == pytest.approx(scores)
    if model == "mouth":
        assert {"correlation", "reconstructed_correlation"} <= set(scores)
    else:
        assert {"roc_auc", "reconstructed_roc_auc", "reconstructed_to_original"} <= set(scores)
        assert -1 <= scores["reconstructed_to_original"] <= 1


def test_unknown_reader_is_refused():
    with pytest.raises(ConfigError, match="mouth"):
        TrainReaderConfig("d", "o", model="lips")
