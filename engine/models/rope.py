"""3D rotary position embedding of the Wan2.1 DiT (spec A.4), computed for arbitrary frame positions.

Wan splits a head of `head_dim` channels into `head_dim / 2` complex pairs made of *adjacent* channels
(2j, 2j+1) and gives the (frame, row, column) axes `c - 2*(c//3)`, `c//3` and `c//3` of those pairs
(c = head_dim / 2; 22/21/21 for 128). Axis `a` with `D_a` real channels rotates pair j by the angle
`pos * theta ** (-2j / D_a)`, theta = 10000.

Wan tabulates positions 0..1023; here the angles are computed in float64 from the positions directly, so a
stream can run past 1024 latent frames. Attention scores depend only on position differences, so absolute
frame positions that keep growing cost nothing in accuracy as long as the angles are formed in float64.
"""
from __future__ import annotations

import torch

THETA = 10000.0


def axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs given to the (frame, row, column) axes: (22, 21, 21) for head_dim 128."""
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def _axis_angles(positions: torch.Tensor, pairs: int) -> torch.Tensor:
    """positions [N] float64 -> angles [N, pairs] float64; pair j turns at theta^(-2j / (2*pairs))."""
    inv_freq = THETA ** (-torch.arange(pairs, dtype=torch.float64) * 2 / (2 * pairs))
    return positions.to(torch.float64)[:, None] * inv_freq[None, :]


def rope_angles(frame_positions: torch.Tensor, grid_hw: tuple[int, int], head_dim: int) -> torch.Tensor:
    """Rotation angles for every token of the given frames, tokens in (frame, row, column) order.

    frame_positions: [F] positions of the frames (any real numbers; float64 is used internally).
    Returns [F * H * W, head_dim // 2] float64 angles.
    """
    grid_h, grid_w = grid_hw
    pt, ph, pw = axis_pairs(head_dim)
    a_t = _axis_angles(frame_positions.reshape(-1).cpu(), pt)  # [F, pt]
    a_h = _axis_angles(torch.arange(grid_h), ph)  # [H, ph]
    a_w = _axis_angles(torch.arange(grid_w), pw)  # [W, pw]
    F, H, W = a_t.shape[0], grid_h, grid_w
    angles = torch.cat(
        [
            a_t[:, None, None, :].expand(F, H, W, pt),
            a_h[None, :, None, :].expand(F, H, W, ph),
            a_w[None, None, :, :].expand(F, H, W, pw),
        ],
        dim=-1,
    )  # [F, H, W, head_dim/2]
    return angles.reshape(F * H * W, pt + ph + pw)


class Rotation:
    """cos/sin of rotation angles, ready to apply to [B, L, heads, head_dim] tensors."""

    def __init__(self, angles: torch.Tensor, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32):
        self.cos = torch.cos(angles).to(device=device, dtype=dtype)[None, :, None, :]  # [1, L, 1, D/2]
        self.sin = torch.sin(angles).to(device=device, dtype=dtype)[None, :, None, :]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate adjacent channel pairs of x [B, L, heads, head_dim]; computed in the table's dtype, cast back."""
        xf = x.to(self.cos.dtype).unflatten(-1, (-1, 2))  # [B, L, heads, D/2, 2]
        x1, x2 = xf[..., 0], xf[..., 1]
        out = torch.stack((x1 * self.cos - x2 * self.sin, x1 * self.sin + x2 * self.cos), dim=-1)
        return out.flatten(-2).type_as(x)
