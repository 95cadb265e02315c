"""A personal adapter that never loses to the one it started from: the straight line between
two adapter states, and the point on it a device keeps.

    R(lam) = R_start + lam * (R_tuned - R_start)                       (r, r), lam in [0, 1]
    dW(lam) = s * B @ R(lam) @ A = dW_start + lam * (dW_tuned - dW_start)     (out, in)

B (out, r) and A (r, in) are the frozen factors both states share, so every point on the line is
itself an adapter of the same basis (one file, exportable as any other), and its delta W is
exactly the interpolation of the two delta Ws. The head's weights interpolate the same way.

`choose_lambda` picks lam from per-example scores on held-out data the tuning never trained on.
lam = 0 (the start) is always a candidate and wins every tie, so the choice never scores below
the start on that held-out data; a positive lam is kept only when its gain over the start is
larger than `significance` standard errors of the paired per-example differences.
Pure functions: no model, no data, no files; torch tensors or numpy arrays alike (no torch import:
the device runtime uses them too).
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np

from shared.errors import LoraXSError

LAMBDA_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def interpolate(start: Mapping, tuned: Mapping, lam: float) -> dict:
    """start + lam * (tuned - start), tensor by tensor (same keys and shapes)."""
    if set(start) != set(tuned):
        raise LoraXSError("the two adapter states to interpolate have different tensors")
    if not (math.isfinite(lam) and 0.0 <= lam <= 1.0):
        raise LoraXSError(f"the interpolation weight must be in [0, 1], got {lam}")
    out = {}
    for name, a in start.items():
        b = tuned[name]
        if a.shape != b.shape:
            raise LoraXSError(f"{name}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
        if isinstance(a, np.ndarray):
            out[name] = (a.astype(np.float32) + lam * (np.asarray(b, np.float32) - a.astype(np.float32))).astype(
                a.dtype
            )
        else:
            out[name] = (a.float() + lam * (b.float() - a.float())).to(a.dtype)
    return out


def paired_gain(start: Sequence[float], candidate: Sequence[float]) -> tuple[float, float]:
    """(sum of per-example gains, their root sum of squares): for 0/1 correctness, wins - losses
    and sqrt(wins + losses), the sign test's statistic and its standard error."""
    if len(start) != len(candidate):
        raise LoraXSError("per-example scores of different lengths")
    diffs = [float(c) - float(s) for s, c in zip(start, candidate)]
    return sum(diffs), math.sqrt(sum(d * d for d in diffs))


def choose_lambda(scores: Mapping[float, Sequence[float]], significance: float = 0.0) -> float:
    """The lam whose per-example held-out scores (higher is better; e.g. 1.0 = correct) have the
    highest mean, ties going to the smaller lam; 0.0 unless that lam beats lam = 0 by more than
    `significance` standard errors of the paired differences (0 = any strict gain)."""
    if 0.0 not in scores:
        raise LoraXSError("the start (lam = 0) must be among the candidates")
    if not significance >= 0:
        raise LoraXSError(f"significance must be >= 0, got {significance}")
    base = scores[0.0]
    best, best_mean = 0.0, _mean(base)
    for lam in sorted(scores):
        mean = _mean(scores[lam])
        if mean > best_mean:
            best, best_mean = lam, mean
    if best == 0.0:
        return 0.0
    gain, spread = paired_gain(base, scores[best])
    return best if gain > significance * spread else 0.0


def _mean(values: Sequence[float]) -> float:
    return sum(float(v) for v in values) / len(values) if len(values) else 0.0
