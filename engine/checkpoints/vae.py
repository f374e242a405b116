"""Load and save the VAEs: the causal VAE (public Wan2.1 names as they are) and the tiny decoder."""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from engine.checkpoints.io import check_tensors, config_from_metadata, read_metadata, read_state, save_state
from engine.models.tiny_vae import TinyVAE, TinyVAEConfig
from engine.models.vae import CausalVAE, VAEConfig


def _load(model: nn.Module, path: str | os.PathLike[str], what: str, dtype: torch.dtype) -> None:
    state = read_state(path, dtype=dtype)
    if state and all(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items()}
    check_tensors(model.state_dict(), state, what)
    model.load_state_dict(state)


def load_vae(path: str | os.PathLike[str], config: VAEConfig | None = None,
             dtype: torch.dtype = torch.float32) -> CausalVAE:
    """This project's VAE checkpoints carry their config (latent statistics included); for the public
    `Wan2.1_VAE` converted to safetensors pass `vae_config("wan")`."""
    config = config or config_from_metadata(read_metadata(path), VAEConfig)
    model = CausalVAE(config).to(dtype)
    _load(model, path, f"VAE preset {config.name!r}", dtype)
    return model.eval()


def load_tiny_vae(path: str | os.PathLike[str], config: TinyVAEConfig | None = None,
                  dtype: torch.dtype = torch.float32) -> TinyVAE:
    config = config or config_from_metadata(read_metadata(path), TinyVAEConfig)
    model = TinyVAE(config).to(dtype)
    _load(model, path, f"tiny VAE preset {config.name!r}", dtype)
    return model.eval()


def save_vae(path: str | os.PathLike[str], model: CausalVAE | TinyVAE, **metadata: str) -> None:
    save_state(path, model.state_dict(), model.cfg, kind=type(model).__name__, **metadata)
