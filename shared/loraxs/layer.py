"""The LoRA-XS layer: a frozen nn.Linear plus scale * U_r R (Sigma_r V_r^T).

Shapes (torch's (out, in) layout for W):
    W       (out, in)   frozen base weight
    lora_B  (out, r)    = U_r                 frozen buffer
    lora_A  (r, in)     = Sigma_r V_r^T       frozen buffer (singular values on the input side)
    lora_R  (r, r)      trainable, the only adapter parameter
    delta W = scale * lora_B @ lora_R @ lora_A          (out, in)
"""

import torch
import torch.nn.functional as F
from torch import nn


class LoraXSLinear(nn.Module):
    def __init__(self, base: nn.Linear, lora_B: torch.Tensor, lora_A: torch.Tensor, scale: float):
        super().__init__()
        out_features, in_features = base.weight.shape
        rank = lora_A.shape[0]
        if lora_B.shape != (out_features, rank) or lora_A.shape != (rank, in_features):
            raise ValueError(
                f"factor shapes {tuple(lora_B.shape)}, {tuple(lora_A.shape)} do not fit a "
                f"({out_features}, {in_features}) weight at rank {rank}"
            )
        self.base = base
        self.scale = float(scale)
        # Factors stay float32 whatever the model's dtype; the adapter path runs in float32.
        self.register_buffer("lora_B", lora_B.detach().float().contiguous())  # (out, r)
        self.register_buffer("lora_A", lora_A.detach().float().contiguous())  # (r, in)
        self.lora_R = nn.Parameter(torch.zeros(rank, rank, device=base.weight.device))  # (r, r)

    @property
    def rank(self) -> int:
        return self.lora_R.shape[0]

    def delta_weight(self) -> torch.Tensor:
        # (out, r) @ (r, r) @ (r, in) -> (out, in)
        return self.scale * (self.lora_B @ self.lora_R @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in)
        z = F.linear(x.float(), self.lora_A)  # (..., r)   = x A^T
        z = F.linear(z, self.lora_R)  # (..., r)           = (x A^T) R^T
        z = F.linear(z, self.lora_B)  # (..., out)         = ((x A^T) R^T) B^T
        return self.base(x) + (self.scale * z).to(x.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={self.scale}"
