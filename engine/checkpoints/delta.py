"""A checkpoint carried as its difference from another, in int8: half the size of the fp16 file.

The GPU machine keeps nothing between sessions, and a call carries at most 64 MiB, most of it wheels: a teacher
trained from the shipped student travels as `pack(teacher, student)` (6.8 MB for the demo preset, against 13.7 MB in
fp16) and is rebuilt there by `unpack`. Each tensor's difference is stored as int8 with one float32 scale (its
largest magnitude over 127), so a tensor comes back within half a scale step of the original; the metadata (config,
recipe) is kept whole.

    python -m engine.checkpoints.delta pack TEACHER BASE OUT      # OUT: a safetensors file
    python -m engine.checkpoints.delta unpack OUT BASE TEACHER
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.checkpoints.io import read_metadata, read_state, save_state
from engine.errors import CheckpointError


def pack(weights: str | os.PathLike[str], base: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    state, ref = read_state(weights), read_state(base)
    if state.keys() != ref.keys() or any(state[k].shape != ref[k].shape for k in state):
        raise CheckpointError(f"{weights} and {base} hold different tensors: a delta needs the same model")
    packed: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        diff = tensor.float() - ref[key].float()
        scale = diff.abs().max().clamp(min=1e-12) / 127
        packed[key] = torch.round(diff / scale).to(torch.int8)
        packed[key + ".delta_scale"] = scale.reshape(1)
    dtypes = {k: str(v.dtype).removeprefix("torch.") for k, v in state.items()}
    save_state(out, packed, delta_metadata=json.dumps(read_metadata(weights)), delta_dtypes=json.dumps(dtypes))


def unpack(packed: str | os.PathLike[str], base: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    meta = read_metadata(packed)
    if "delta_dtypes" not in meta:
        raise CheckpointError(f"{packed} is not a delta written by engine.checkpoints.delta.pack")
    deltas, ref, dtypes = read_state(packed), read_state(base), json.loads(meta["delta_dtypes"])
    if dtypes.keys() != ref.keys():
        raise CheckpointError(f"{packed} was packed against another model than {base}")
    state = {k: (ref[k].float() + deltas[k].float() * deltas[k + ".delta_scale"]).to(getattr(torch, dtypes[k]))
             for k in dtypes}
    tmp = Path(out).with_name(Path(out).name + ".tmp")  # the original metadata, config included, as it was
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=json.loads(meta["delta_metadata"]))
    os.replace(tmp, out)


if __name__ == "__main__":
    import sys

    verbs = {"pack": pack, "unpack": unpack}
    if len(sys.argv) != 5 or sys.argv[1] not in verbs:
        sys.exit("usage: python -m engine.checkpoints.delta pack|unpack SRC BASE OUT")
    verbs[sys.argv[1]](*sys.argv[2:])
