"""BitNet b1.58 linear layers: ternary weights, 8-bit activations, full-precision latent weights.

Forward (Ma et al. 2024, "The Era of 1-bit LLMs", and its training-tips note):

    x  = rmsnorm(x)                                   parameter-free, as in the reference BitLinear
    sx = 127 / max|x| per token;   x_q = clamp(round(x * sx), -128, 127) / sx
    g  = mean|W| per output row and group of ``group_size`` input features (or the whole row)
    W_q = clamp(round(W / g), -1, 1) * g              each group takes exactly the values {-g, 0, +g}
    y  = x_q @ W_q^T

Training keeps the latent full-precision ``weight`` and passes gradients straight through the
rounding (``q(w).detach() + (w - w.detach())``), so the optimizer, checkpoints and DDP see an ordinary
``nn.Linear`` weight. Without autograd the quantized tensors are used as they are, so a model
rebuilt from packed ternary weights gives bit-identical outputs.

The norm is a no-op (up to eps) for inputs that are already normalised (q/k/v, MLP up/gate) and
adds the "subln" normalisation before the attention output and MLP down projections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-5


def weight_scales(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """absmean scale per (output row, group of input features): shape (out, in // group_size)."""
    out_f, in_f = w.shape
    return w.abs().view(out_f, in_f // group_size, group_size).mean(dim=-1).clamp(min=EPS)


def ternarize(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ternary int8 codes in {-1, 0, 1} shaped like w, float32 scales (out, groups))."""
    w = w.detach().float()
    scale = weight_scales(w, group_size)
    out_f, in_f = w.shape
    t = (w.view(out_f, -1, group_size) / scale[..., None]).round().clamp(-1, 1)
    return t.view(out_f, in_f).to(torch.int8), scale


def dequantize(t: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    out_f, in_f = t.shape
    groups = scale.shape[1]
    return (t.to(dtype).view(out_f, groups, -1) * scale.to(dtype)[..., None]).view(out_f, in_f)


def quantize_weight(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """W_q = round-clip(W / g, -1, 1) * g in w's dtype (differentiable only through the STE)."""
    out_f, in_f = w.shape
    grouped = w.view(out_f, in_f // group_size, group_size)
    scale = grouped.abs().mean(dim=-1, keepdim=True).clamp(min=EPS)
    return ((grouped / scale).round().clamp(-1, 1) * scale).view(out_f, in_f)


def quantize_activation(x: torch.Tensor) -> torch.Tensor:
    """Per-token absmax to the int8 range and back (values stay in x's dtype)."""
    scale = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=EPS)
    return (x * scale).round().clamp(-128, 127) / scale


def _ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Exactly q in the forward pass (x - x is exactly 0, unlike x + (q - x)), identity backward."""
    return q.detach() + (x - x.detach()) if torch.is_grad_enabled() else q


class BitLinear(nn.Linear):
    """Bias-free BitNet b1.58 linear. ``group_size`` None = one scale per output row (all its inputs)."""

    def __init__(self, in_features: int, out_features: int, group_size: int | None = 64):
        super().__init__(in_features, out_features, bias=False)
        group_size = group_size or in_features
        if in_features % group_size:
            raise ValueError(f"BitLinear group size {group_size} must divide in_features {in_features}")
        self.group_size = group_size
        # Set by the packed-ternary loader: ``weight`` already holds W_q, so quantizing again (which
        # would rescale by mean|W_q| != g) is skipped.
        self.prequantized = False

    def quantized_weight(self) -> torch.Tensor:
        """The weight the forward pass multiplies by: three values per scale group."""
        if self.prequantized:
            return self.weight
        return _ste(self.weight, quantize_weight(self.weight, self.group_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.rms_norm(x, (x.size(-1),), eps=1e-6)
        x = _ste(x, quantize_activation(x))
        return F.linear(x, self.quantized_weight())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}"


def bitlinear_factory(group_size: int | None):
    """A ``GPT(cfg, linear=...)`` factory building BitLinear layers."""

    def make(in_features: int, out_features: int) -> BitLinear:
        return BitLinear(in_features, out_features, group_size)

    return make


# ------------------------------------------------------------------------------------ packing
# 2 bits per weight, four weights per byte, lowest bits first: code 0 -> 0, 1 -> +1, 2 -> -1.

def pack_ternary(t: torch.Tensor) -> torch.Tensor:
    """int8 {-1, 0, 1} tensor -> flat uint8 tensor of ceil(n / 4) bytes."""
    codes = t.flatten().to(torch.int16)
    codes = torch.where(codes < 0, 2, codes).to(torch.uint8)
    pad = (-codes.numel()) % 4
    codes = torch.cat((codes, codes.new_zeros(pad))).view(-1, 4)
    return codes[:, 0] | (codes[:, 1] << 2) | (codes[:, 2] << 4) | (codes[:, 3] << 6)


def unpack_ternary(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of pack_ternary: int8 {-1, 0, 1} tensor of ``shape``."""
    n = 1
    for s in shape:
        n *= s
    codes = torch.stack([(packed >> shift) & 3 for shift in (0, 2, 4, 6)], dim=1).flatten()[:n]
    t = codes.to(torch.int8)
    if bool((t == 3).any()):
        raise ValueError("packed ternary data holds an invalid 2-bit code")
    return torch.where(t == 2, torch.tensor(-1, dtype=torch.int8), t).view(shape)
