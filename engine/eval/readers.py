"""Loading the shipped reading networks (engine/assets/mouth-reader.safetensors, identity.safetensors)."""
from __future__ import annotations

from pathlib import Path

import torch

from engine.checkpoints.io import check_tensors, config_from_metadata, read_metadata, read_state
from engine.errors import CheckpointError
from engine.eval.nets import IdentityEmbedder, MouthReader, ReaderConfig

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MOUTH_READER = ASSETS / "mouth-reader.safetensors"
IDENTITY = ASSETS / "identity.safetensors"


def _load(cls, path: Path, device: str):
    if not path.exists():
        raise CheckpointError(f"no reader weights at {path}: train them with `python -m engine.train.eval_nets`")
    model = cls(config_from_metadata(read_metadata(path), ReaderConfig))
    state = read_state(path, dtype=torch.float32)
    check_tensors(model.state_dict(), state, cls.__name__)
    model.load_state_dict(state)
    return model.to(device).eval().requires_grad_(False)


def load_readers(mouth: str | Path | None = None, identity: str | Path | None = None,
                 device: str = "cpu") -> tuple[MouthReader, IdentityEmbedder]:
    return (_load(MouthReader, Path(mouth or MOUTH_READER), device),
            _load(IdentityEmbedder, Path(identity or IDENTITY), device))
