"""Round parameters of secure aggregation (the stage-0 message) and the fixed-point encoding.

A client with vector x (d,) and example count w sends, before masking,
    q = rint((clip(x * w' / max_weight, -C, C) + C) / step)  (d,) integers in [0, 2^b - 1]
    followed by w' = min(w, max_weight)                       one exact integer
with step = 2C / (2^b - 1) and b = modulus_bits - ceil(log2(n)), so the sum over n clients never
wraps mod 2^modulus_bits. Scaling by w'/max_weight (as Flower's SecAgg+ does) keeps w'x inside
the clipping range. The server gets sum(w' x) and sum(w') only; the error of the weighted mean
is at most max_weight * n * step / 2 / sum(w') (`max_mean_error`), plus clipping of any
|x * w'/max_weight| > C, which the sender counts and logs.
"""

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np

from shared.errors import LoraXSError

log = logging.getLogger(__name__)
U64 = 2**64
# The fewest clients a round may sum: with k summed, any k - 1 of them learn the last one's update
# from the change of the global adapter (the sum is public to them), so k = 2 reveals each
# update to the other client; 3 is the least that hides one client from any single other.
MIN_GROUP = 3


class SecAggError(LoraXSError):
    """Secure aggregation cannot go on (too few clients left, bad parameters); one-line reason."""


@dataclass(frozen=True)
class SecAggParams:
    """Everything both sides must agree on for one round; `participants` are node ids."""

    participants: tuple[int, ...]
    threshold: int  # Shamir threshold t: shares needed to rebuild a secret; a strict majority
    vector_length: int  # d, the float values per client (the weight travels as one more value)
    clipping_range: float = 8.0  # C
    max_weight: int = 1000  # example counts are clipped to this; precision drops as w << it
    modulus_bits: int = 32  # k: sums mod 2^k; k <= 32 travels as uint32 (4 B per value)
    run_id: int = 0
    server_round: int = 0

    def __post_init__(self):
        ids, n = self.participants, len(self.participants)
        if not isinstance(ids, tuple) or any(type(i) is not int or not 0 <= i < U64 for i in ids):
            raise SecAggError("participants must be a tuple of node ids (integers in [0, 2^64))")
        if list(ids) != sorted(set(ids)) or n < MIN_GROUP:
            raise SecAggError(f"participants must be at least {MIN_GROUP} distinct node ids, sorted")
        if type(self.threshold) is not int or not (n // 2 < self.threshold <= n and self.threshold >= 2):
            raise SecAggError(f"threshold {self.threshold!r} must be a strict majority of {n} (and >= 2)")
        if type(self.vector_length) is not int or not 1 <= self.vector_length <= 2**26:
            raise SecAggError(f"vector_length {self.vector_length!r} must be in [1, 2^26]")
        c = self.clipping_range
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c < 1e6:
            raise SecAggError(f"clipping_range {c!r} must be a positive number below 1e6")
        object.__setattr__(self, "clipping_range", float(c))
        if type(self.modulus_bits) is not int or not 16 <= self.modulus_bits <= 62:
            raise SecAggError(f"modulus_bits {self.modulus_bits!r} must be in [16, 62]")
        if type(self.max_weight) is not int or not 1 <= self.max_weight < 2**self.modulus_bits // n:
            raise SecAggError(f"max_weight {self.max_weight!r}: n * max_weight must be < 2^modulus_bits")
        if self.quantization_bits < 8:
            raise SecAggError(f"modulus_bits {self.modulus_bits} leave too few bits for {n} clients")
        for name in ("run_id", "server_round"):
            if type(getattr(self, name)) is not int or not 0 <= getattr(self, name) < U64:
                raise SecAggError(f"{name} must be an integer in [0, 2^64)")

    @property
    def quantization_bits(self) -> int:
        """b: bits per value, leaving ceil(log2(n)) bits of headroom so n summands never wrap."""
        return self.modulus_bits - math.ceil(math.log2(len(self.participants)))

    @property
    def step(self) -> float:
        return 2 * self.clipping_range / (2**self.quantization_bits - 1)

    @property
    def wire_dtype(self) -> type:
        return np.uint32 if self.modulus_bits <= 32 else np.uint64

    def context(self) -> bytes:
        """Round identity mixed into every derived key: keys of one round never fit another."""
        return b"loraxs-secagg/v1" + self.run_id.to_bytes(8, "big") + self.server_round.to_bytes(8, "big")

    def to_config(self) -> dict:
        """Flat dict of ints, floats and a list of ints (fits a Flower ConfigRecord)."""
        config = asdict(self)
        config["participants"] = list(self.participants)
        return config

    @classmethod
    def from_config(cls, config: object) -> "SecAggParams":
        try:
            config = dict(config)
            config["participants"] = tuple(config["participants"])
            return cls(**config)
        except SecAggError:
            raise
        except Exception as err:
            raise SecAggError(f"malformed secure-aggregation setup ({type(err).__name__})") from None


def quantize(vector: np.ndarray, weight: int, params: SecAggParams) -> np.ndarray:
    """(d,) floats and an example count -> (d + 1,) uint64 in [0, 2^b): see the module docstring."""
    vector = np.asarray(vector, dtype=np.float64)
    if vector.shape != (params.vector_length,) or not np.isfinite(vector).all():
        raise SecAggError(f"the vector must be ({params.vector_length},) finite values, got {vector.shape}")
    if isinstance(weight, bool) or not isinstance(weight, (int, np.integer)) or weight < 0:
        raise SecAggError(f"the weight must be a non-negative example count, got {weight!r}")
    w = min(int(weight), params.max_weight)
    scaled = vector * (w / params.max_weight)  # (d,) |w' x / max_weight|
    c = params.clipping_range
    clipped = int(np.count_nonzero(np.abs(scaled) > c))
    if clipped:
        log.warning("secure aggregation: %d of %d values clipped to +-%g", clipped, scaled.size, c)
    q = np.rint((np.clip(scaled, -c, c) + c) / params.step).astype(np.uint64)  # (d,) in [0, 2^b - 1]
    return np.concatenate([q, np.array([w], dtype=np.uint64)])  # (d + 1,)


def dequantize(total: np.ndarray, num_summed: int, params: SecAggParams) -> tuple[np.ndarray, int]:
    """Unmasked sum (d + 1,) of `num_summed` encodings -> (sum of w' x (d,) float64, sum of w')."""
    values = total[:-1].astype(np.float64) * params.step - num_summed * params.clipping_range  # (d,)
    return values * params.max_weight, int(total[-1])


def max_mean_error(params: SecAggParams, num_summed: int, total_weight: int) -> float:
    """Largest rounding error of any element of sum(w' x) / sum(w'), clipping aside."""
    if total_weight <= 0:
        raise SecAggError("the total weight is zero: no mean to bound")
    return params.max_weight * num_summed * params.step / 2 / total_weight
