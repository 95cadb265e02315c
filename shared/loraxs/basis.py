"""The LoRA-XS basis: frozen truncated-SVD factors of every adapted weight, and its fingerprint.

For W (out, in) ~= U_r Sigma_r V_r^T:
    B = U_r                (out, r)
    A = Sigma_r V_r^T      (r, in)
Every client must hold bit-identical factors, since averaging R matrices averages delta W
exactly only over one shared basis; the fingerprint names them. A float32 SVD differs across
machines and thread counts (signs, last bits), so the default recipe is canonical:
    "canonical"  SVD in float64 on one thread, the sign of every singular pair fixed (the
                 largest-magnitude entry of each column of B is positive), then rounded once
                 to float32,
and a client derives the factors itself from the base weights it holds; the fingerprint proves
the result (a mismatch falls back to receiving them). `basis_dtype` then rounds the factors to
fp16 / bf16 values (kept in float32 tensors): everyone, server included, uses the rounded ones.
tests/test_basis_recipe.py checks that it reproduces (threads, fresh processes; slow: the packaged MiniLM).
"""

import hashlib
from dataclasses import dataclass

import torch

from shared.errors import LoraXSError
from shared.loraxs.config import LoraXSConfig

FINGERPRINT_VERSION = b"loraxs-basis/1"
FACTOR_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Basis:
    """Module name -> (B (out, r), A (r, in)) float32 CPU tensors, in model order."""

    rank: int
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def fingerprint(self) -> str:
        return basis_fingerprint(self.rank, self.factors)

    def num_bytes(self) -> int:
        return sum(b.numel() * b.element_size() + a.numel() * a.element_size() for b, a in self.factors.values())


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
    """Truncated SVD of one weight (out, in) -> (B (out, r), A (r, in)), float32 on the CPU,
    rounded to `config.basis_dtype` values."""
    if config.svd_method == "canonical":
        lora_B, lora_A = canonical_factors(weight.detach().cpu(), config.rank)
    else:
        lora_B, lora_A = float32_factors(weight, config)
    return round_factor(lora_B, config.basis_dtype), round_factor(lora_A, config.basis_dtype)


def canonical_factors(weight: torch.Tensor, rank: int, one_thread: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The canonical recipe on `weight`'s device: float64 SVD (on one CPU thread: LAPACK's float64
    results change in the last bits with the thread count, enough to flip a few float32
    roundings), fixed signs, one rounding to float32."""
    w = weight.double()  # (out, in)
    threads = torch.get_num_threads()
    if one_thread:
        torch.set_num_threads(1)
    try:
        U, S, Vh = torch.linalg.svd(w, full_matrices=False)  # (out, k), (k,), (k, in)
    finally:
        torch.set_num_threads(threads)
    U, S, Vh = U[:, :rank], S[:rank], Vh[:rank]
    pivot = U.abs().argmax(dim=0)  # (r,) row of each column's largest-magnitude entry
    signs = torch.where(U.gather(0, pivot[None, :])[0] < 0, -1.0, 1.0).to(U)  # (r,)
    lora_B = (U * signs[None, :]).float().contiguous()  # (out, r) * (1, r) -> (out, r)
    lora_A = ((signs * S)[:, None] * Vh).float().contiguous()  # (r, 1) * (r, in) -> (r, in)
    return lora_B.cpu(), lora_A.cpu()


def round_factor(factor: torch.Tensor, basis_dtype: str) -> torch.Tensor:
    """float32 tensor -> the same tensor with values rounded to fp16 / bf16 (still float32)."""
    if basis_dtype == "fp32":
        return factor
    rounded = factor.to(FACTOR_DTYPES[basis_dtype]).float()
    if not torch.isfinite(rounded).all():
        raise LoraXSError(f"a factor exceeds the range of {basis_dtype}; use basis dtype bf16 or fp32")
    return rounded


def float32_factors(weight: torch.Tensor, config: LoraXSConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 recipes: "exact" (torch.linalg.svd) and "randomized" (torch.svd_lowrank)."""
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
