"""Classifier-free guidance on velocities (Ho & Salimans; the audio/text split of InfiniteTalk, spec F.1)."""
from __future__ import annotations

import torch


def cfg(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """v = v_uncond + g·(v_cond − v_uncond); g = 1 is the conditional prediction, g = 0 the unconditional."""
    return v_uncond + scale * (v_cond - v_uncond)


def audio_text_cfg(v_cond: torch.Tensor, v_drop_text: torch.Tensor, v_uncond: torch.Tensor,
                   text_scale: float, audio_scale: float) -> torch.Tensor:
    """Three passes: conditioned on both, on audio only (text dropped), on neither:
    v = v_uncond + g_text·(v_cond − v_drop_text) + g_audio·(v_drop_text − v_uncond).
    With g_text = 1 this is the two-pass audio guidance `cfg(v_cond, v_drop_audio, g_audio)` only when the
    text-dropped pass is replaced by the audio-dropped one; call `cfg` for that case."""
    return v_uncond + text_scale * (v_cond - v_drop_text) + audio_scale * (v_drop_text - v_uncond)
