"""Resumable renders: the work folder beside the film, and the manifest that says whose it is.

    OUT.parts/
      manifest.json       every input, hashed: the render config, each shot's portrait and audio (contents),
                          span and emotion, and the weights (contents); a rerun with the same manifest goes on
                          from the last checkpoint, one with another stops and says what differs
      seg-00000.mp4 ...   finished h264 segments, one per checkpoint (engine.generate.mp4.VideoSegment)
      state.safetensors   the last checkpoint: the long-video method's state (KV cache, history or fused
                          tail), the noise generator, the audio features and position, the decoder's cache,
                          the join meter; counters in its metadata
      shot-0002.wav       speech made from a shot's text, once (espeak-ng differs by a glottal cycle from run
                          to run within a process, so it is made once and kept)

Every file is written beside its name and renamed into place (`save_state`, the segments), so a render
killed at any moment leaves the last checkpoint whole: the frames made after it are made again, equal.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from engine.checkpoints.io import read_metadata, read_state, save_state
from engine.errors import RenderError


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, read in pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def module_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's tensors (names, dtypes, shapes and bytes): which weights a render used."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def manifest_digest(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    """Dotted paths at which two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new))
                for d in _differences(old.get(k), new.get(k), f"{where}.{k}" if where else k)]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in _differences(a, b, f"{where}[{i}]")]
    return [] if old == new else [where or "(everything)"]


class WorkDir:
    def __init__(self, out: str | os.PathLike[str]):
        out = Path(out)
        self.root = out.with_name(out.name + ".parts")
        self.manifest_path = self.root / "manifest.json"
        self.state_path = self.root / "state.safetensors"

    def segment(self, index: int) -> Path:
        return self.root / f"seg-{index:05d}.mp4"

    def open(self, manifest: dict[str, Any], restart: bool = False) -> bool:
        """Take the folder for `manifest`: True if it holds a checkpoint of the same inputs to go on from.
        A folder of other inputs is refused (RenderError naming what differs) unless `restart`."""
        if self.manifest_path.exists():
            try:
                old = json.loads(self.manifest_path.read_text())
            except (OSError, ValueError):
                old = {}
            if old.get("digest") == manifest_digest(manifest):
                return self.state_path.exists()
            if not restart:
                changed = _differences(old.get("inputs"), manifest)
                raise RenderError(f"{self.root} holds part of a render of other inputs (different: "
                                  f"{', '.join(changed[:6])}{' ...' if len(changed) > 6 else ''}); run the "
                                  "command that made it to finish it, or pass --restart to discard it")
        if restart and self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_text(self.manifest_path, json.dumps({"digest": manifest_digest(manifest), "inputs": manifest},
                                                        indent=1, sort_keys=True))
        return False

    def save(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """The checkpoint, atomically (a crash leaves the previous one)."""
        save_state(self.state_path, tensors, render=json.dumps(meta))

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return read_state(self.state_path), json.loads(read_metadata(self.state_path)["render"])

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _write_text(path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
