"""LoRA-XS configuration: one dataclass, validated on construction."""

from dataclasses import dataclass

from shared.errors import LoraXSError

BERT_TARGETS = ("query", "value", "attention.output.dense", "output.dense")
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
INITS = ("normal", "zeros")
SVD_METHODS = ("canonical", "exact", "randomized")
BASIS_DTYPES = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class LoraXSConfig:
    """How LoRA-XS adapts a model.

    rank:            r, the size of each trainable r x r matrix R (and of the frozen SVD factors).
    alpha:           scale = alpha / rank multiplies the adapter's output.
    target_modules:  name suffixes of the nn.Linear modules to adapt; empty = defaults for the
                     model family (BERT-like or LLaMA/Mistral-like, see `default_targets`).
    init:            "normal" draws R from N(0, init_std^2); "zeros" starts at R = 0.
    svd_method:      "canonical" (float64 SVD, fixed signs, rounded to float32: reproducible, so a
                     client can derive the factors itself), "exact" (float32 torch.linalg.svd) or
                     "randomized" (float32 torch.svd_lowrank, for large W).
    basis_dtype:     fp32 | fp16 | bf16: the factors' values are rounded to this precision
                     (stored as float32); everyone, server included, uses the rounded factors.
    """

    rank: int = 16
    alpha: float = 16.0
    target_modules: tuple[str, ...] = ()
    init: str = "normal"
    init_std: float = 1e-5
    svd_method: str = "canonical"
    svd_niter: int = 4
    svd_oversample: int = 8
    basis_dtype: str = "fp32"

    def __post_init__(self):
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not isinstance(self.rank, int) or self.rank < 1:
            raise LoraXSError(f"LoRA-XS rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise LoraXSError(f"LoRA-XS alpha must be positive, got {self.alpha!r}")
        if self.init not in INITS:
            raise LoraXSError(f"LoRA-XS init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.init == "normal" and not self.init_std > 0:
            raise LoraXSError(f"LoRA-XS init_std must be positive, got {self.init_std!r}")
        if self.svd_method not in SVD_METHODS:
            raise LoraXSError(f"svd method must be one of {', '.join(SVD_METHODS)}, got {self.svd_method!r}")
        if self.basis_dtype not in BASIS_DTYPES:
            raise LoraXSError(f"basis dtype must be one of {', '.join(BASIS_DTYPES)}, got {self.basis_dtype!r}")
        if self.svd_niter < 0 or self.svd_oversample < 0:
            raise LoraXSError("svd_niter and svd_oversample must be >= 0")
        if any(not t or not isinstance(t, str) for t in self.target_modules):
            raise LoraXSError(f"target modules must be non-empty names, got {self.target_modules!r}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def default_targets(module_names: list[str]) -> tuple[str, ...]:
    """BERT-like targets, or LLaMA/Mistral-like ones when the model has `q_proj` modules."""
    if any(name.endswith("q_proj") for name in module_names):
        return LLAMA_TARGETS
    return BERT_TARGETS
