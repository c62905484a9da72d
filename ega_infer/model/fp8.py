"""FP8 weight matrix products (behind ``Engine.from_pretrained(..., fp8=True)``).

``FP8Linear`` keeps a linear layer's weight as ``float8_e4m3fn`` with one scale per output
channel. On GPUs with FP8 tensor cores (compute capability 8.9 and up) the product runs as
``torch._scaled_mm`` with row-wise scales: activations are quantised per row on the fly, the
output is bfloat16. Elsewhere (CPU, older GPUs, shapes that are not multiples of 16) the weight
is dequantised and multiplied in the activation dtype: the same quantised numbers, so CPU tests
check the accuracy of the format.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FP8Linear", "quantize_fp8", "fp8_matmul_supported"]

_E4M3_MAX = 448.0


def fp8_matmul_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


class FP8Linear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if linear.bias is not None:
            raise ValueError("FP8Linear: layers with a bias are not quantised")
        w = linear.weight.detach().float()
        scale = (w.abs().amax(1) / _E4M3_MAX).clamp(min=1e-12)  # [out]
        self.register_buffer("weight", (w / scale[:, None]).to(torch.float8_e4m3fn))
        self.register_buffer("scale", scale)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return (self.weight.float() * self.scale[:, None]).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fp8_matmul_supported(x.device) and self.in_features % 16 == 0 and self.out_features % 16 == 0:
            flat = x.reshape(-1, self.in_features)
            x_scale = (flat.abs().amax(1, keepdim=True).float() / _E4M3_MAX).clamp(min=1e-12)  # [M, 1]
            x_fp8 = (flat.float() / x_scale).to(torch.float8_e4m3fn)
            out = torch._scaled_mm(x_fp8, self.weight.t(), scale_a=x_scale, scale_b=self.scale[None, :],
                                   out_dtype=torch.bfloat16)
            return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return x @ self.dequantized(x.dtype).t()


def quantize_fp8(module: nn.Module, parts: tuple[str, ...] = ("encoder", "decoder", "creative")) -> int:
    """Replace the bias-free ``nn.Linear`` layers of ``module``'s ``parts`` (the sequence
    model: encoder, decoder, creative head) by ``FP8Linear``; the small reward and payment
    networks stay in full precision. Returns how many layers were replaced."""
    replaced = 0
    for part in parts:
        root = getattr(module, part)
        for name, child in list(root.named_modules()):
            for attr, sub in list(child.named_children()):
                if isinstance(sub, nn.Linear) and sub.bias is None:
                    setattr(child, attr, FP8Linear(sub))
                    replaced += 1
    return replaced
