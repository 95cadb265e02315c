"""Mixed ranks: a device trains only the top-left r' x r' block of each R.

LoRA-XS factors are nested: the rank-r' factors are the first r' columns of B = U_r and the first
r' rows of A = Sigma_r V_r^T (the SVD is sorted by singular value). A device at rank r' < r uses
exactly those, with the federation's scale alpha / r (not alpha / r'), so its delta W is
    s B[:, :r'] R' A[:r', :] = s B pad(R') A,    pad(R') = R' in the top-left block, 0 elsewhere.
Two ways to combine clients of several ranks into one r x r matrix per layer:
  zero-pad   the weighted mean of pad(R'_k): exactly the weighted mean of the clients' delta W;
  per-entry  each entry averaged over the clients that hold it (weighted by examples); an entry
             no client holds keeps the global value.
"""

import numpy as np


def top_left(stacked: np.ndarray, rank: int) -> np.ndarray:
    """(L, r, r) -> (L, rank, rank)."""
    return np.ascontiguousarray(stacked[:, :rank, :rank])


def zero_pad(block: np.ndarray, rank: int) -> np.ndarray:
    """(L, r', r') -> (L, rank, rank), zeros outside the top-left block."""
    layers, small, _ = block.shape
    padded = np.zeros((layers, rank, rank), dtype=block.dtype)
    padded[:, :small, :small] = block
    return padded


def holders_weight(ranks: list[int], weights: list[float], rank: int) -> np.ndarray:
    """(rank, rank): the total weight of the clients holding each entry."""
    held = np.zeros((rank, rank), dtype=np.float64)
    for small, weight in zip(ranks, weights):
        held[:small, :small] += weight
    return held


def per_entry_from_zero_padded(
    mean_padded: np.ndarray, ranks: list[int], weights: list[float], global_r: np.ndarray
) -> np.ndarray:
    """The per-entry mean from the zero-padded weighted mean (L, r, r): each entry rescaled by
    total weight / weight of its holders; entries nobody holds keep `global_r` (L, r, r)."""
    rank = mean_padded.shape[-1]
    held = holders_weight(ranks, weights, rank)  # (r, r)
    total = float(sum(weights))
    scale = np.divide(total, held, out=np.zeros_like(held), where=held > 0)  # (r, r)
    out = mean_padded.astype(np.float64) * scale  # broadcast over L
    return np.where(held > 0, out, global_r).astype(mean_padded.dtype)


def truncated_factors(factors: dict, rank: int) -> dict:
    """module -> (B (out, r), A (r, in)) -> the nested rank-`rank` factors (B[:, :rank], A[:rank])."""
    return {name: (b[:, :rank].contiguous(), a[:rank].contiguous()) for name, (b, a) in factors.items()}
