"""Widen the latent space of trained models without changing what they compute (Net2Net's function-preserving
growth, Chen et al. 2016), so that a VAE with more latent channels, and the DiT and tiny decoder on its latents,
start from the trained weights rather than from scratch.

Why: the demo VAE packs 4 frames into each latent frame, and 16 channels were too few for the mouth's motion
within those 4 frames (one frame alone through the same VAE read r 0.92 on held-out clips, whole clips 0.74).

Each function copies every tensor whose shape did not change and, for those that touch the latent channels,
embeds the old weights so that:
  * the VAE encodes the old channels as before (the new ones start from the fresh init and learn), and its
    decoder reads the old channels as before and the new ones through zero weights;
  * the DiT reads the new channels through zero weights and predicts zero velocity for them;
  * the tiny decoder reads the new channels (and a reference input it gains) through zero weights.
Training then moves from a model that already works.
"""
from __future__ import annotations

import torch

from engine.errors import ConfigError
from engine.models.dit import DiT
from engine.models.tiny_vae import TinyVAE
from engine.models.vae import CausalVAE


def _copy_unchanged(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor], widened: set[str]) -> None:
    for key, value in new.items():
        if key in widened:
            continue
        if key not in old or old[key].shape != value.shape:
            raise ConfigError(f"cannot widen: {key} is {tuple(old[key].shape) if key in old else 'missing'} in the "
                              f"trained model and {tuple(value.shape)} in the wider one; only the latent width may differ")
        value.copy_(old[key])


def _check(old_z: int, new_z: int) -> None:
    if new_z < old_z:
        raise ConfigError(f"widening goes from fewer latent channels to more, not {old_z} -> {new_z}")


@torch.no_grad()
def widen_vae(old: CausalVAE, new: CausalVAE) -> None:
    """Load `old` (z channels) into `new` (more channels, otherwise the same config) in place."""
    zo, zn = old.cfg.z_dim, new.cfg.z_dim
    _check(zo, zn)
    n = new.state_dict()
    device = n["conv1.weight"].device
    o = {k: v.to(device) for k, v in old.state_dict().items()}
    head = "encoder.head.2"  # the causal conv to [μ | log σ²], 2z output channels
    widened = {f"{head}.weight", f"{head}.bias", "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
               "decoder.conv1.weight"}
    _copy_unchanged(o, n, widened)
    # [μ | log σ²] of z channels each: old channel i sits at i (μ) or i - zo + zn (log σ²)
    where = torch.cat([torch.arange(zo), torch.arange(zo) + zn]).to(device)
    for key in (f"{head}.weight", f"{head}.bias"):  # new rows keep their fresh init: they must carry a signal
        n[key][where] = o[key]
    eye = torch.eye(2 * zn, device=device)  # conv1, 1x1 over [μ | log σ²]: the old map on old channels, identity on new ones
    eye[where.unsqueeze(1), where.unsqueeze(0)] = o["conv1.weight"][:, :, 0, 0, 0]
    n["conv1.weight"].copy_(eye.view_as(n["conv1.weight"]))
    n["conv1.bias"].zero_()[where] = o["conv1.bias"]
    eye = torch.eye(zn, device=device)  # conv2, 1x1 over z before the decoder: the same
    eye[:zo, :zo] = o["conv2.weight"][:, :, 0, 0, 0]
    n["conv2.weight"].copy_(eye.view_as(n["conv2.weight"]))
    n["conv2.bias"].zero_()[:zo] = o["conv2.bias"]
    n["decoder.conv1.weight"].zero_()[:, :zo] = o["decoder.conv1.weight"]  # [C, z, 3, 3, 3]


@torch.no_grad()
def widen_tiny(old: TinyVAE, new: TinyVAE) -> None:
    """Load a tiny decoder of z channels (decoder-only checkpoints too) into one of as many or more channels, or
    into one that also reads the stream's first latent frame (`reference`), in place: the new inputs start
    through zero weights, so it decodes as the old one did until trained."""
    zo, zn = old.cfg.z_dim, new.cfg.z_dim
    _check(zo, zn)
    if old.cfg.reference and not new.cfg.reference:
        raise ConfigError("cannot drop the reference input of a tiny decoder that reads it")
    first = "decoder.1.weight"  # conv(z (+ z of the reference), widths[0]) after the clamp: [w, z, 3, 3]
    n = {k: v for k, v in new.state_dict().items() if k.startswith("decoder.")}  # the encoder is not trained
    o = {k: v.to(n[first].device) for k, v in old.state_dict().items()}
    _copy_unchanged(o, n, {first})
    n[first].zero_()[:, :zo] = o[first][:, :zo]
    if old.cfg.reference:
        n[first][:, zn:zn + zo] = o[first][:, zo:]


@torch.no_grad()
def widen_dit(old: DiT, z: int) -> DiT:
    """A DiT reading and predicting z latent channels, with `old`'s weights (old.cfg.in_dim channels)."""
    from dataclasses import replace

    zo = old.cfg.in_dim
    _check(zo, z)
    if old.cfg.out_dim != zo:
        raise ConfigError("widen_dit needs a DiT whose input and output latents have the same channels")
    new = DiT(replace(old.cfg, in_dim=z, out_dim=z)).to(next(old.parameters()).dtype)
    o, n = old.state_dict(), new.state_dict()
    widened = {"patch_embedding.weight", "head.head.weight", "head.head.bias"}
    _copy_unchanged(o, n, widened)
    n["patch_embedding.weight"].zero_()[:, :zo] = o["patch_embedding.weight"]  # [dim, z, pt, ph, pw]
    patch = n["head.head.weight"].shape[0] // z  # output rows are (pt, ph, pw, channel), channel innermost
    for key in ("head.head.weight", "head.head.bias"):
        n[key].zero_().unflatten(0, (patch, z))[:, :zo] = o[key].unflatten(0, (patch, zo))
    return new
