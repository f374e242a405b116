"""Float8 (e4m3) matmuls for the DiT's large linears on Hopper GPUs.

Each `nn.Linear` of the blocks (self-attention q/k/v/o, the cross-attentions' query and output projections,
the FFN) becomes an `Fp8Linear`: the weight is quantised once with one scale per output channel, the
activations per token at every call (scale = the row's absolute maximum / 448, e4m3's largest finite
value), and `torch._scaled_mm` multiplies them with float32 accumulation into the original dtype. The
audio and text key/value projections (a few tokens) and everything outside the blocks stay as they are.

    restore = fp8_linears(model)   # swap in place; restore() puts the original modules back
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from exporters.errors import BackendError

E4M3_MAX = 448.0
SKIP = ("kv_linear", "cross_attn.k", "cross_attn.v")  # a handful of tokens: nothing to gain


def fp8_supported(device: torch.device) -> bool:
    """float8 matmuls need a CUDA device of compute capability 8.9 or higher (Ada, Hopper)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9) \
        and hasattr(torch, "_scaled_mm")


def _quantise_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (e4m3 [M, K], float32 scales [M, 1]) with x ≈ q · scale."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale


class Fp8Linear(nn.Module):
    """y = x Wᵀ + b with x and W in float8 e4m3 (per-token and per-output-channel scales)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        if w.shape[0] % 16 or w.shape[1] % 16:
            raise BackendError(f"fp8 matmuls need dimensions divisible by 16, got {tuple(w.shape)}")
        q, scale = _quantise_rows(w)
        self.register_buffer("weight_fp8", q)  # [N, K] row-major; its transpose is the column-major B operand
        self.register_buffer("weight_scale", scale.reshape(1, -1))  # [1, N]
        self.register_buffer("bias", linear.bias.detach().clone() if linear.bias is not None else None)
        self.weight_fp8: torch.Tensor
        self.weight_scale: torch.Tensor
        self.bias: torch.Tensor | None
        self.out_dtype = w.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        q, scale = _quantise_rows(rows)
        y = torch._scaled_mm(q, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale,
                             bias=self.bias, out_dtype=self.out_dtype)
        return y.reshape(*x.shape[:-1], -1)


def fp8_linears(model: nn.Module) -> Callable[[], None]:
    """Swap the blocks' large linears for Fp8Linear in place; returns a function that swaps them back."""
    device = next(model.parameters()).device
    if not fp8_supported(device):
        raise BackendError(f"float8 matmuls need a CUDA GPU of compute capability 8.9+ (Ada, Hopper); the model "
                           f"is on {device}")
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for name, module in list(model.named_modules()):
        if not name.startswith("blocks.") or not isinstance(module, nn.Linear) or name.endswith(SKIP):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        swapped.append((parent, child, module))
        setattr(parent, child, Fp8Linear(module))

    def restore() -> None:
        for parent, child, module in swapped:
            setattr(parent, child, module)

    return restore
