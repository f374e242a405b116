"""Checkpoints: safetensors only, configs in the metadata, public Wan names loaded as they are."""
from engine.checkpoints.io import read_state, save_state
from engine.checkpoints.wan import load_dit, save_dit

__all__ = ["load_dit", "save_dit", "read_state", "save_state"]
