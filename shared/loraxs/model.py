"""Adapting a whole Hugging Face model with LoRA-XS: inject, adapter state, and a pure merge.

The adapter state is exactly what trains and travels: every `lora_R` (r, r) and, when the task
head is trained (sequence classification), the head's parameters. Frozen factors are buffers.
"""

import copy

import torch
from torch import nn

from shared.errors import LoraXSError
from shared.loraxs.basis import Basis, svd_factors
from shared.loraxs.config import LoraXSConfig, default_targets
from shared.loraxs.layer import LoraXSLinear


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def target_module_names(model: nn.Module, config: LoraXSConfig) -> list[str]:
    """Names of the modules LoRA-XS adapts, in model order; errors name what is supported."""
    names = [name for name, _ in model.named_modules()]
    targets = config.target_modules or default_targets(names)
    found = []
    for name, module in model.named_modules():
        if not name or not _matches(name, targets):
            continue
        if isinstance(module, LoraXSLinear):
            raise LoraXSError(f"module {name!r} is already adapted with LoRA-XS")
        if type(module).__name__ == "Conv1D":
            raise LoraXSError(f"module {name!r} is a GPT-2 style Conv1D; LoRA-XS supports torch.nn.Linear only")
        if not isinstance(module, nn.Linear):
            continue  # e.g. a parent container whose name happens to match
        rank_limit = min(module.weight.shape)
        if config.rank > rank_limit:
            raise LoraXSError(f"rank {config.rank} exceeds min(out, in) = {rank_limit} of module {name!r}")
        found.append(name)
    if not found:
        raise LoraXSError(
            f"no torch.nn.Linear module matches the targets {list(targets)}; "
            "LoRA-XS adapts nn.Linear layers named by suffix"
        )
    return found


def compute_basis(model: nn.Module, config: LoraXSConfig) -> Basis:
    """SVD factors of every target weight (float32), before injection."""
    modules = dict(model.named_modules())
    factors = {name: svd_factors(modules[name].weight, config) for name in target_module_names(model, config)}
    return Basis(rank=config.rank, factors=factors)


def head_parameter_names(model: nn.Module) -> list[str]:
    """Parameters outside the backbone (e.g. `classifier.*`, `score.*`): the task head."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    return [name for name, _ in model.named_parameters() if not name.startswith(prefix)]


def inject(
    model: nn.Module,
    config: LoraXSConfig,
    basis: Basis | None = None,
    train_head: bool = False,
    seed: int = 0,
) -> Basis:
    """Adapt `model` in place; returns the basis used (computed from W when not given).

    Freezes every base parameter; the r x r matrices (and the head, with `train_head`) train.
    A given basis (e.g. shipped by a server) must cover exactly the target modules.
    """
    names = target_module_names(model, config)
    if basis is None:
        basis = compute_basis(model, config)
    if basis.rank != config.rank or set(basis.factors) != set(names):
        raise LoraXSError(
            f"the basis (rank {basis.rank}, {len(basis.factors)} modules) does not fit this model "
            f"and config (rank {config.rank}, {len(names)} target modules)"
        )
    head = set(head_parameter_names(model)) if train_head else set()
    for name, param in model.named_parameters():
        param.requires_grad_(name in head)
    generator = torch.Generator().manual_seed(seed)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        lora_B, lora_A = basis.factors[name]
        try:
            layer = LoraXSLinear(base, lora_B.to(base.weight.device), lora_A.to(base.weight.device), config.scale)
        except ValueError as err:
            raise LoraXSError(f"the basis does not fit module {name!r}: {err}") from None
        if config.init == "normal":
            with torch.no_grad():
                init = torch.randn(layer.lora_R.shape, generator=generator) * config.init_std
                layer.lora_R.copy_(init)
        setattr(parent, child, layer)
    return basis


def adapted_layers(model: nn.Module) -> dict[str, LoraXSLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraXSLinear)}


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Exactly the trainable adapter state: every `*.lora_R` and the head, as CPU float copies."""
    return {name: param.detach().cpu().clone() for name, param in model.named_parameters() if param.requires_grad}


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Inverse of `adapter_state`: the keys and shapes must match exactly."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise LoraXSError(f"adapter state does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, param in params.items():
        value = state[name]
        if tuple(value.shape) != tuple(param.shape):
            raise LoraXSError(f"adapter tensor {name!r} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
        with torch.no_grad():
            param.copy_(value.to(param.dtype))


def merged_model(model: nn.Module) -> nn.Module:
    """A copy of `model` with every LoRA-XS layer folded into a plain nn.Linear (W + delta W).

    Pure: `model` is left untouched. The merge runs in float32, then casts to W's dtype.
    """
    merged = copy.deepcopy(model)
    for name, layer in adapted_layers(merged).items():
        parent_name, _, child = name.rpartition(".")
        base = layer.base
        with torch.no_grad():
            weight = base.weight.float() + layer.delta_weight()  # (out, in)
            base.weight.copy_(weight.to(base.weight.dtype))
        setattr(merged.get_submodule(parent_name), child, base)
    for param in merged.parameters():
        param.requires_grad_(False)
    return merged
