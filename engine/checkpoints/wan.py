"""Load Wan2.1 DiT weights: public checkpoints (original or diffusers key names, single or sharded
safetensors, optional `model.` prefix) and this project's own, with no conversion script.

Anything that cannot be accounted for is refused with the names: missing tensors (except the audio branch,
which public T2V checkpoints lack and which starts at zero), extra tensors, and wrong shapes.
"""
from __future__ import annotations

import os
import re

import torch

from engine.checkpoints.io import check_tensors, config_from_metadata, read_metadata, read_state, save_state
from engine.models.dit import DiT, DiTConfig

# Parts of this project's DiT that public Wan checkpoints do not have (they start at their init).
OPTIONAL = re.compile(r"^(audio_proj\.|blocks\.\d+\.(norm_x|audio_cross_attn)\.)")

# diffusers -> original names (spec A.9), applied in order.
DIFFUSERS = [
    (r"^blocks\.(\d+)\.attn1\.to_out\.0\.", r"blocks.\1.self_attn.o."),
    (r"^blocks\.(\d+)\.attn1\.to_([qkv])\.", r"blocks.\1.self_attn.\2."),
    (r"^blocks\.(\d+)\.attn1\.norm_([qk])\.", r"blocks.\1.self_attn.norm_\2."),
    (r"^blocks\.(\d+)\.attn2\.to_out\.0\.", r"blocks.\1.cross_attn.o."),
    (r"^blocks\.(\d+)\.attn2\.to_([qkv])\.", r"blocks.\1.cross_attn.\2."),
    (r"^blocks\.(\d+)\.attn2\.norm_([qk])\.", r"blocks.\1.cross_attn.norm_\2."),
    (r"^blocks\.(\d+)\.norm2\.", r"blocks.\1.norm3."),
    (r"^blocks\.(\d+)\.ffn\.net\.0\.proj\.", r"blocks.\1.ffn.0."),
    (r"^blocks\.(\d+)\.ffn\.net\.2\.", r"blocks.\1.ffn.2."),
    (r"^blocks\.(\d+)\.scale_shift_table$", r"blocks.\1.modulation"),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
]
HINTS = [
    (re.compile(r"(k_img|v_img|norm_k_img|img_emb)"), "image-to-video (CLIP) weights: this engine conditions on "
     "the portrait through the sink frame; load a text-to-video checkpoint"),
    (re.compile(r"^(model|generator|generator_ema)\."), "a wrapper prefix the loader does not recognise"),
]


def normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip a common `model.` prefix (Self-Forcing style) and map diffusers names to the original ones."""
    if state and all(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items()}
    if any(k.startswith("condition_embedder.") or ".attn1." in k for k in state):
        mapped = {}
        for key, value in state.items():
            for pattern, repl in DIFFUSERS:
                key = re.sub(pattern, repl, key)
            mapped[key] = value
        state = mapped
    return state


def check_state(model: DiT, state: dict[str, torch.Tensor]) -> list[str]:
    """Refuse what cannot be accounted for; the audio branch may be absent as a whole (it then starts at zero)."""
    return check_tensors(model.state_dict(), state, f"DiT preset {model.cfg.name!r}", OPTIONAL, HINTS)


def load_dit(path: str | os.PathLike[str], config: DiTConfig | None = None, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> DiT:
    """A DiT with the checkpoint's weights. `config` is read from the metadata of this project's checkpoints;
    public checkpoints carry none, so name the preset: `load_dit(path, dit_config("wan-1.3b"))`."""
    if config is None:
        config = config_from_metadata(read_metadata(path), DiTConfig)
    state = normalise_keys(read_state(path, dtype=dtype))
    with torch.device("meta"):
        model = DiT(config)
    left_at_init = check_state(model, state)
    model.load_state_dict(state, strict=False, assign=True)
    if left_at_init:  # the audio branch is absent: materialise it with its own init (zero output)
        for module in model.audio_branch():
            module.to_empty(device="cpu")
        model.init_audio_branch()
    return model.to(device=device, dtype=dtype)


def save_dit(path: str | os.PathLike[str], model: DiT, **metadata: str) -> None:
    save_state(path, model.state_dict(), model.cfg, kind="dit", **metadata)
