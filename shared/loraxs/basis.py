"""The LoRA-XS basis: frozen truncated-SVD factors of every adapted weight, and its fingerprint.

For W (out, in) ~= U_r Sigma_r V_r^T:
    B = U_r                (out, r)
    A = Sigma_r V_r^T      (r, in)
Every client must hold bit-identical factors, since averaging R matrices averages delta W
exactly only over one shared basis. SVD results can differ across machines (signs, last bits),
so the server computes the factors once and ships them; the fingerprint names them.
"""

import hashlib
from dataclasses import dataclass

import torch

from shared.loraxs.config import LoraXSConfig

FINGERPRINT_VERSION = b"loraxs-basis/1"


@dataclass(frozen=True)
class Basis:
    """Module name -> (B (out, r), A (r, in)) float32 CPU tensors, in model order."""

    rank: int
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def fingerprint(self) -> str:
        return basis_fingerprint(self.rank, self.factors)

    def num_bytes(self) -> int:
        return sum(b.numel() * b.element_size() + a.numel() * a.element_size()
                   for b, a in self.factors.values())


def basis_fingerprint(rank: int, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> str:
    """sha256 over the rank, then per module (sorted by name): name, shapes, dtype, factor bytes."""
    digest = hashlib.sha256(FINGERPRINT_VERSION)
    digest.update(f"rank={rank}".encode())
    for name in sorted(factors):
        lora_B, lora_A = factors[name]
        digest.update(f"|{name}|{tuple(lora_B.shape)}|{tuple(lora_A.shape)}|{lora_B.dtype}|".encode())
        digest.update(lora_B.detach().cpu().contiguous().numpy().tobytes())
        digest.update(lora_A.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def svd_factors(weight: torch.Tensor, config: LoraXSConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated SVD of one weight (out, in) in float32 -> (B (out, r), A (r, in))."""
    w = weight.detach().float().cpu()  # (out, in)
    r = config.rank
    if config.svd_method == "exact":
        U, S, Vh = torch.linalg.svd(w, full_matrices=False)  # (out, k), (k,), (k, in)
        U, S, Vh = U[:, :r], S[:r], Vh[:r]
    else:
        q = min(r + config.svd_oversample, min(w.shape))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the randomized range finder is seeded: same W -> same factors
            U, S, V = torch.svd_lowrank(w, q=q, niter=config.svd_niter)  # (out, q), (q,), (in, q)
        U, S, Vh = U[:, :r], S[:r], V[:, :r].T
    lora_B = U.contiguous()  # (out, r)
    lora_A = (S[:, None] * Vh).contiguous()  # (r, 1) * (r, in) -> (r, in) = Sigma_r V_r^T
    return lora_B, lora_A
