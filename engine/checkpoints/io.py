"""Safetensors in and out: single files, sharded folders, index files; configs kept in the metadata.

Nothing is unpickled: `.pt/.pth/.bin/.ckpt` files are refused with a message saying how to convert them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, TypeVar

import torch

from engine.errors import CheckpointError

PICKLED = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
C = TypeVar("C")


def checkpoint_files(path: str | os.PathLike[str]) -> list[Path]:
    """The safetensors files of a checkpoint: a file, a folder of shards, or a `*.safetensors.index.json`."""
    p = Path(path)
    if p.suffix in PICKLED:
        raise CheckpointError(f"{p}: pickled checkpoints are never loaded; convert it once with "
                              "`safetensors.torch.save_file(torch.load(f, weights_only=True), 'x.safetensors')`")
    if p.name.endswith(".index.json"):
        try:
            weight_map = json.loads(p.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as err:
            raise CheckpointError(f"{p}: not a readable safetensors index ({err})") from err
        return [p.parent / name for name in sorted(set(weight_map.values()))]
    if p.is_dir():
        files = sorted(p.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{p}: folder holds no *.safetensors files")
        return files
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file or folder")
    return [p]


def read_state(path: str | os.PathLike[str], device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint, optionally cast to `dtype` (floating tensors only)."""
    from safetensors import SafetensorError, safe_open

    state: dict[str, torch.Tensor] = {}
    for f in checkpoint_files(path):
        try:
            with safe_open(str(f), framework="pt", device=str(device)) as sf:
                for key in sf.keys():
                    t = sf.get_tensor(key)
                    if key in state:
                        raise CheckpointError(f"{f}: tensor {key!r} appears in two shards")
                    state[key] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{f}: not a readable safetensors file ({err})") from err
    return state


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    f = checkpoint_files(path)[0]
    try:
        with safe_open(str(f), framework="pt") as sf:
            return dict(sf.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{f}: not a readable safetensors file ({err})") from err


def config_from_metadata(meta: dict[str, str], cls: type[C], key: str = "config") -> C:
    """Rebuild a frozen dataclass config saved by `save_state`; tuples come back as tuples."""
    if key not in meta:
        raise CheckpointError(f"checkpoint metadata has no {key!r}; pass the config explicitly")
    raw = json.loads(meta[key])
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(raw) - set(fields)
    if unknown:
        raise CheckpointError(f"checkpoint config has fields {sorted(unknown)} unknown to {cls.__name__}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    return cls(**values)


def save_state(path: str | os.PathLike[str], state: dict[str, torch.Tensor], config: Any = None,
               **metadata: str) -> None:
    """Write tensors (contiguous, on the CPU) and metadata atomically: a crash never leaves half a file."""
    from safetensors.torch import save_file

    meta = dict(metadata)
    if config is not None:
        meta["config"] = json.dumps(dataclasses.asdict(config))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp), metadata=meta)
    os.replace(tmp, p)


def save_half(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy a checkpoint with its floating tensors in float16 and its metadata unchanged: the shipped form
    (loaders cast back to the dtype they are asked for)."""
    from safetensors.torch import save_file

    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in read_state(src).items()}
    tmp = Path(dst).with_name(Path(dst).name + ".tmp")
    save_file(state, str(tmp), metadata=read_metadata(src))
    os.replace(tmp, dst)


def check_tensors(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], what: str,
                  optional: re.Pattern[str] | None = None,
                  hints: list[tuple[re.Pattern[str], str]] = []) -> list[str]:
    """Raise CheckpointError naming every tensor that cannot be accounted for: missing (unless `optional`
    matches it and no optional tensor is present at all), unexpected, or misshapen. Returns the optional
    names the checkpoint leaves out."""
    optional_present = optional is not None and any(optional.match(k) for k in state)
    missing = [k for k in own if k not in state and (optional is None or optional_present or not optional.match(k))]
    extra = [k for k in state if k not in own]
    misshapen = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in state and state[k].shape != own[k].shape]
    if missing or extra or misshapen:
        lines = [f"checkpoint does not fit {what}:"]
        for title, items in (("missing", missing), ("unexpected", extra), ("wrong shape", misshapen)):
            if items:
                lines.append(f"  {len(items)} {title}: " + ", ".join(items[:8]) + (" ..." if len(items) > 8 else ""))
        for pattern, hint in hints:
            if any(pattern.search(k) for k in extra):
                lines.append(f"  hint: {hint}")
        raise CheckpointError("\n".join(lines))
    return [k for k in own if k not in state]
