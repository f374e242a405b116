"""Load and save the VAEs: the causal VAE (public Wan2.1 names as they are) and the tiny decoder."""
from __future__ import annotations

import os
import re

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
    """A tiny VAE; a decoder-only checkpoint (no `encoder.*` tensors, as shipped: streams only decode)
    gives a model whose `encoder` is None."""
    config = config or config_from_metadata(read_metadata(path), TinyVAEConfig)
    model = TinyVAE(config).to(dtype)
    state = read_state(path, dtype=dtype)
    missing = check_tensors(model.state_dict(), state, f"tiny VAE preset {config.name!r}",
                            optional=re.compile(r"encoder\."))
    model.load_state_dict(state, strict=not missing)
    if missing:
        model.encoder = None  # type: ignore[assignment]
    return model.eval()


def decoder_only(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Ship a tiny VAE without its encoder (fp16): what a stream needs."""
    from engine.checkpoints.io import save_half

    model = load_tiny_vae(src)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    meta = {k: v for k, v in read_metadata(src).items() if k != "config"}
    save_state(dst, state, model.cfg, **meta)
    save_half(dst, dst)


def save_vae(path: str | os.PathLike[str], model: CausalVAE | TinyVAE, **metadata: str) -> None:
    save_state(path, model.state_dict(), model.cfg, kind=type(model).__name__, **metadata)
