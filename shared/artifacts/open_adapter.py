"""The one way to open an adapter with its frozen factors, for local personalization, the ONNX
export and the ClientApp alike.

    adapter file (optional) -> factors -> model -> checks -> state loaded

Factors come from, in order: factors already in hand (a federation's node state), a `--basis`
file (which must be for this base model), the cache (a data folder's `.loraxs/basis/`, then
$LORAXS_CACHE/basis/), else they are derived: the adapter's SVD recipe (the canonical one unless
its metadata names another, rounded to its basis dtype) on the base model. Whichever it is, its
fingerprint must be the adapter's; the canonical SVD reproduces bit for bit on the machines
tested (tests/test_basis_recipe.py), and where it does not, the error says to
pass the basis file the server shipped. A ClientApp derives a federation's factors the same way
(`derived_basis`).
"""

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from shared.artifacts.adapter_bounds import check_adapter_effect
from shared.artifacts.adapter_file import AdapterMeta, check_adapter_matches, load_adapter
from shared.artifacts.basis_file import load_basis
from shared.artifacts.cache import basis_cache_dirs, find_cached_basis
from shared.base_models import build_adapted_model, canonical_model_id, load_base_model
from shared.data.text_splits import TextSplits
from shared.errors import LoraXSError
from shared.loraxs.basis import Basis
from shared.loraxs.config import LoraXSConfig
from shared.loraxs.mixed_rank import truncated_factors
from shared.loraxs.model import compute_basis, load_adapter_state
from shared.personal_output import OutputParts, split_parts

DERIVED_SOURCE = "the factors derived from the base model"


@dataclass(frozen=True)
class AdapterFile:
    """An adapter file as read: its state and metadata (checked against the user's flags)."""

    path: Path
    state: dict[str, torch.Tensor]  # exactly the model's adapter state
    meta: AdapterMeta
    parts: OutputParts = OutputParts()  # a personal adapter's lexical part and temperature (never trained on)


@dataclass(frozen=True)
class OpenedAdapter:
    model: nn.Module  # base model + LoRA-XS, the adapter state loaded when there was one
    basis: Basis
    lora: LoraXSConfig
    labels: list[str] | None
    factors_source: str  # for the user: "basis file X", "the local cache", "an SVD of the base model"


def read_adapter(
    path: Path, model: str | None = None, rank: int | None = None, task: str | None = None, key_source=None
) -> AdapterFile:
    """Load an adapter file; the flags given (--model, --rank, --task) must agree with it.

    The base model an adapter names is loaded only when it is the default one or `model` (--model)
    names it: a file must never make a device load another folder or download a hub repository."""
    state, meta = load_adapter(path, key_source)  # key_source: an adapter encrypted at rest
    if model is not None:
        check_adapter_matches(meta, str(path), canonical_model_id(model), meta.basis_fingerprint)
    elif canonical_model_id(meta.base_model) != canonical_model_id(None):
        raise LoraXSError(
            f"{path} was trained on base model {meta.base_model[:200]!r}, not the default one; "
            "to load that model, pass --model with it"
        )
    if rank is not None and rank > meta.rank:
        raise LoraXSError(
            f"{path} has rank {meta.rank}; --rank {rank} cannot exceed it (a smaller --rank trains its top-left block)"
        )
    if task is not None and task != meta.task:
        raise LoraXSError(f"{path} is for task {meta.task}, but --task is {task}")
    state, parts = split_parts(state, meta.extra, len(meta.labels) if meta.labels else None, str(path))
    return AdapterFile(Path(path), state, meta, parts)


def nested_adapter(
    adapter: AdapterFile, rank: int, basis_file: Path | None = None, data_dir: Path | None = None
) -> tuple[AdapterFile, Basis]:
    """The adapter as a device at rank r' < r trains it (mixed ranks): the top-left r' x r' block
    of each R, the nested factors (first r' columns of B, rows of A), and the same scale
    alpha / r (so alpha becomes alpha * r' / r). Its factors are looked up or derived first."""
    meta = adapter.meta
    basis, _ = find_basis(canonical_model_id(meta.base_model), meta.basis_fingerprint, basis_file, data_dir)
    if basis is None:
        lora = LoraXSConfig(
            rank=meta.rank,
            alpha=meta.alpha,
            target_modules=meta.targets,
            svd_method=meta.extra.get("svd_method", "canonical"),
            basis_dtype=meta.extra.get("basis_dtype", "fp32"),
        )
        basis = derived_basis(
            meta.base_model, meta.task, lora, meta.basis_fingerprint, pooling=meta.extra.get("pooling", "pooler")
        )
    nested = Basis(rank, truncated_factors(basis.factors, rank))
    state = {k: v[:rank, :rank].clone() if k.endswith("lora_R") else v for k, v in adapter.state.items()}
    small = replace(meta, rank=rank, alpha=meta.alpha * rank / meta.rank, basis_fingerprint=nested.fingerprint)
    return AdapterFile(adapter.path, state, small), nested


def check_labels(adapter: AdapterFile, splits: TextSplits, data_dir: Path) -> None:
    """A classifier's class names must be the data folder's, in the same order."""
    if adapter.meta.task != "seq-cls":
        return
    folder, expected = tuple(splits.labels or ()), tuple(adapter.meta.labels or ())
    if folder != expected:
        raise LoraXSError(
            f"the labels of {data_dir} ({', '.join(folder)}) do not match those of "
            f"{adapter.path} ({', '.join(expected)})"
        )


def check_fingerprint(basis: Basis, expected: str | None, source: str) -> None:
    if expected and basis.fingerprint != expected:
        raise LoraXSError(
            f"the adapter belongs to basis {expected[:12]}, but {source} has {basis.fingerprint[:12]} "
            "(SVD results differ across machines: pass the basis file the server shipped, --basis FILE)"
        )


def find_basis(
    base_model: str, fingerprint: str | None, basis_file: Path | None, data_dir: Path | None
) -> tuple[Basis | None, str]:
    """(factors, where they came from); None = compute them from the base model."""
    if basis_file:
        basis, for_model = load_basis(basis_file)
        if for_model and for_model != base_model:
            raise LoraXSError(f"basis file {basis_file} holds factors of base model {for_model!r}, not {base_model!r}")
        check_fingerprint(basis, fingerprint, f"basis file {basis_file}")
        return basis, f"basis file {basis_file}"
    if fingerprint:
        basis = find_cached_basis(fingerprint, basis_cache_dirs(data_dir))
        if basis is not None:
            return basis, "the local cache"
    return None, "an SVD of the base model"


def derived_basis(
    base_model: str,
    task: str,
    lora: LoraXSConfig,
    fingerprint: str,
    pooling: str | None = None,
    model: nn.Module | None = None,
) -> Basis:
    """The factors derived on this device from the base weights by `lora`'s recipe, checked
    against `fingerprint` (LoraXSError when they differ). The head is not part of the factors.
    `model`: the base model already loaded (only read)."""
    if model is None:
        model = load_base_model(canonical_model_id(base_model), task, pooling=pooling)
    basis = compute_basis(model, lora)
    check_fingerprint(basis, fingerprint, DERIVED_SOURCE)
    return basis


def open_adapter(
    adapter: AdapterFile | None,
    *,
    base_model: str | None = None,
    task: str = "seq-cls",
    lora: LoraXSConfig | None = None,
    labels: list[str] | None = None,
    basis: Basis | None = None,
    fingerprint: str | None = None,
    basis_file: Path | None = None,
    data_dir: Path | None = None,
    seed: int = 0,
    pooling: str | None = None,
) -> OpenedAdapter:
    """The adapted model of `adapter` (its file rules: base model, task, rank, alpha, targets,
    labels, fingerprint), or of a fresh adapter from `base_model`, `task`, `lora`, `labels`
    (`lora=None`: the default config at the rank of the factors found). `basis` / `fingerprint`:
    factors in hand and the fingerprint they must have; else they are looked up (see above)."""
    if adapter is not None:
        meta = adapter.meta
        base_model, task, fingerprint = meta.base_model, meta.task, meta.basis_fingerprint
        lora = LoraXSConfig(
            rank=meta.rank,
            alpha=meta.alpha,
            target_modules=meta.targets,
            svd_method=meta.extra.get("svd_method", "canonical"),
            basis_dtype=meta.extra.get("basis_dtype", "fp32"),
        )
        labels = list(meta.labels) if meta.labels else None
        pooling = meta.extra.get("pooling", "pooler")  # files from before pooling was recorded
    base_model = canonical_model_id(base_model)
    source = "the factors in hand"
    if basis is None:
        basis, source = find_basis(base_model, fingerprint, basis_file, data_dir)
    if lora is None:
        lora = LoraXSConfig(rank=basis.rank) if basis is not None else LoraXSConfig()
    computed = basis is None
    model, basis = build_adapted_model(base_model, task, lora, labels=labels, basis=basis, seed=seed, pooling=pooling)
    if computed:
        check_fingerprint(basis, fingerprint, DERIVED_SOURCE)
    else:
        check_fingerprint(basis, fingerprint, source)
    if adapter is not None:
        check_adapter_matches(adapter.meta, str(adapter.path), base_model, basis.fingerprint)
        load_adapter_state(model, adapter.state)
        check_adapter_effect(model, str(adapter.path))  # a crafted R x alpha that swamps the layer
    return OpenedAdapter(model, basis, lora, labels, source)
