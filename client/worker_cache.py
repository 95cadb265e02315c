"""One adapted model and tokenizer per worker process, not one per message.

A Ray worker serves many simulated clients in turn; they all share one basis, so the base model
is loaded and injected once per (model, config, fingerprint). Every message then loads its own
adapter state into it (every trainable tensor is overwritten, nothing leaks between clients).
The node's *own* memory of the factors is its NodeState; this cache only saves loading time.
"""

from collections.abc import Callable
from functools import lru_cache

from torch import nn

from shared.artifacts.open_adapter import open_adapter
from shared.base_models import load_tokenizer
from shared.loraxs.basis import Basis
from shared.loraxs.config import LoraXSConfig

_models: dict[tuple, nn.Module] = {}
MAX_MODELS = 2


def cached_model(
    model_id: str,
    task: str,
    lora: LoraXSConfig,
    labels: tuple[str, ...] | None,
    fingerprint: str,
    load_basis: Callable[[], Basis],
    verify: bool = True,
) -> nn.Module:
    """`verify`: the factors must have `fingerprint` (False for factors derived from checked
    ones, e.g. a smaller rank's nested factors; `fingerprint` then only names them here)."""
    key = (model_id, task, lora, labels, fingerprint)
    if key not in _models:
        if len(_models) >= MAX_MODELS:
            _models.pop(next(iter(_models)))
        _models[key] = open_adapter(
            None,
            base_model=model_id,
            task=task,
            lora=lora,
            labels=list(labels) if labels else None,
            basis=load_basis(),
            fingerprint=fingerprint if verify else None,
        ).model
    return _models[key]


@lru_cache(maxsize=2)
def cached_tokenizer(model_id: str):
    return load_tokenizer(model_id)
