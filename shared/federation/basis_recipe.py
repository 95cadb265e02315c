"""The recipe of the frozen factors: what a node needs to derive them itself (basis-delivery derive).

Every node holds the base weights the factors come from, and the canonical SVD
(shared/loraxs/basis.py) reproduces them bit for bit, so the server's first message to a node
carries this recipe and the fingerprint instead of ~1.6 MB of factors. The node derives them only
when the recipe is its own run config's (a message never makes a device load another model), and
keeps them only when their fingerprint is the announced one; otherwise it answers
"unknown-fingerprint" and is sent the factors.
"""

from dataclasses import dataclass

from shared.loraxs.config import LoraXSConfig

KEYS = ("basis-model", "basis-rank", "basis-targets", "basis-method", "basis-dtype")


@dataclass(frozen=True)
class BasisRecipe:
    """model: canonical base-model id; targets: comma-joined module suffixes ("" = the model
    family's defaults); method: the SVD recipe; dtype: the precision the factors are rounded to."""

    model: str
    rank: int
    targets: str
    method: str
    dtype: str

    @classmethod
    def of(cls, model_id: str, lora: LoraXSConfig) -> "BasisRecipe":
        return cls(model_id, lora.rank, ",".join(lora.target_modules), lora.svd_method, lora.basis_dtype)

    def to_config(self) -> dict:
        return dict(zip(KEYS, (self.model, self.rank, self.targets, self.method, self.dtype)))

    @classmethod
    def from_config(cls, config) -> "BasisRecipe | None":
        """The recipe in a received config, or None when there is none (or it is malformed)."""
        try:
            model, rank, targets, method, dtype = (config[key] for key in KEYS)
        except (KeyError, TypeError):
            return None
        if not (
            all(isinstance(v, str) for v in (model, targets, method, dtype))
            and isinstance(rank, int)
            and not isinstance(rank, bool)
        ):
            return None
        return cls(model, rank, targets, method, dtype)
