"""One way to build an adapted model from names: base model + LoRA-XS + (optional) given basis."""

from torch import nn

from shared.adapter_file import AdapterMeta
from shared.loraxs.basis import Basis
from shared.loraxs.config import LoraXSConfig, default_targets
from shared.loraxs.model import inject
from shared.models import canonical_model_id, load_base_model


def build_adapted_model(
    model_id: str | None,
    task: str,
    config: LoraXSConfig,
    labels: list[str] | None = None,
    basis: Basis | None = None,
    seed: int = 0,
) -> tuple[nn.Module, Basis]:
    """Loads the base model (head seeded), injects LoRA-XS with `basis` or a fresh SVD."""
    model = load_base_model(canonical_model_id(model_id), task, len(labels) if labels else None, seed)
    basis = inject(model, config, basis=basis, train_head=task == "seq-cls", seed=seed)
    return model, basis


def adapter_meta(
    model_id: str | None,
    task: str,
    config: LoraXSConfig,
    basis: Basis,
    labels: list[str] | None,
    **extra: str,
) -> AdapterMeta:
    """Metadata for an adapter trained on `basis` (the resolved targets, not an empty default)."""
    targets = config.target_modules or default_targets(list(basis.factors))
    return AdapterMeta(
        base_model=canonical_model_id(model_id),
        task=task,
        rank=config.rank,
        alpha=config.alpha,
        targets=tuple(targets),
        labels=tuple(labels) if labels else None,
        basis_fingerprint=basis.fingerprint,
        extra={k: str(v) for k, v in extra.items()},
    )
