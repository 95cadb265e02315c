"""Adapter files: safetensors holding only the adapter state, with self-describing metadata.

Loading checks the format, the integrity of the bytes and of the metadata (sha256 of each in the
metadata, format version 2), the type and range of every metadata value (finite alpha > 0, a
positive integer rank, ...), every tensor's dtype, finiteness and magnitude, and, against a model,
the base model id, the basis fingerprint and every tensor's shape. Never pickle.

Files of format version 1 (metadata not checksummed, so anyone could mark a file as version 1 to
skip the check) are refused with one line.
"""

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save as save_bytes

from shared.artifacts.atomic_write import write_atomically
from shared.artifacts.blob import read_blob, read_file
from shared.base_models import canonical_model_id, model_pooling
from shared.crypto.at_rest import PASSPHRASE_ENV, KeySource, decrypt_bytes, header_kind, is_encrypted, write_encrypted
from shared.data.text_splits import TASKS
from shared.errors import LoraXSError
from shared.loraxs.basis import Basis
from shared.loraxs.config import LoraXSConfig, default_targets

ADAPTER_FORMAT = "loraxs-adapter"
ADAPTER_FORMAT_VERSION = "2"  # 2: metadata_sha256 covers the metadata; 1 is refused
READABLE_VERSIONS = (ADAPTER_FORMAT_VERSION,)
UNCHECKED_VERSIONS = ("1",)  # metadata not checksummed: refused
MAX_ABS_WEIGHT = 1e4  # larger adapter weights only come from a diverged run or a crafted file
MAX_ALPHA = 1024.0  # scale = alpha / rank; 64 x the default alpha 16 (the effect is bounded too: adapter_bounds.py)
MAX_RANK = 4096
MAX_LABELS = 1000
FLOAT_DTYPES = (torch.float32, torch.float16, torch.float64)


@dataclass(frozen=True)
class AdapterMeta:
    base_model: str
    task: str
    rank: int
    alpha: float
    targets: tuple[str, ...]
    labels: tuple[str, ...] | None
    basis_fingerprint: str
    extra: dict[str, str] = field(default_factory=dict)  # e.g. round, kind (global/personal)

    def to_strings(self) -> dict[str, str]:
        data = asdict(self)
        extra = data.pop("extra")
        out = {k: json.dumps(v) for k, v in data.items()}
        out["extra"] = json.dumps(extra)
        return out

    @classmethod
    def from_strings(cls, strings: dict[str, str]) -> "AdapterMeta":
        """Parses and checks every value; ValueError (with the field named) when one is wrong."""
        values = {}
        for name in cls.__dataclass_fields__:
            if name not in strings:
                raise ValueError(f"'{name}' is missing")
            try:
                values[name] = json.loads(strings[name])
            except (ValueError, RecursionError):
                raise ValueError(f"'{name}' is not valid JSON") from None
        _check_meta_values(values)
        values["targets"] = tuple(values["targets"])
        if values["labels"] is not None:
            values["labels"] = tuple(values["labels"])
        values["alpha"] = float(values["alpha"])
        return cls(**values)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_str_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def _check_meta_values(values: dict) -> None:
    base_model = values["base_model"]
    if not isinstance(base_model, str) or not base_model.isprintable() or not 0 < len(base_model) <= 1000:
        raise ValueError("'base_model' must be a model id or folder (printable, at most 1000 characters)")
    if values["task"] not in TASKS:
        raise ValueError(f"'task' must be one of {', '.join(TASKS)}")
    if not _is_int(values["rank"]) or not 1 <= values["rank"] <= MAX_RANK:
        raise ValueError(f"'rank' must be an integer in [1, {MAX_RANK}], got {str(values['rank'])[:40]!r}")
    alpha = values["alpha"]
    if not (_is_int(alpha) or isinstance(alpha, float)) or not (0 < alpha <= MAX_ALPHA and math.isfinite(alpha)):
        raise ValueError(f"'alpha' must be a finite number in (0, {MAX_ALPHA:g}], got {str(alpha)[:40]!r}")
    if not _is_str_list(values["targets"]) or not values["targets"]:
        raise ValueError("'targets' must be a non-empty list of module names")
    labels = values["labels"]
    if labels is not None and (not _is_str_list(labels) or not 1 <= len(labels) <= MAX_LABELS):
        raise ValueError(f"'labels' must be null or a list of 1 to {MAX_LABELS} strings")
    if not isinstance(values["basis_fingerprint"], str):
        raise ValueError("'basis_fingerprint' must be a string")
    extra = values["extra"]
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        raise ValueError("'extra' must be a table of strings")


def metadata_digest(metadata: dict[str, str]) -> str:
    """sha256 over every metadata entry but itself, sorted by key."""
    items = sorted((k, v) for k, v in metadata.items() if k != "metadata_sha256")
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def check_weights(state: dict[str, torch.Tensor], source: str) -> None:
    """Float tensors, finite and below MAX_ABS_WEIGHT: anything else is a diverged run or a bad file."""
    for name, tensor in state.items():
        if tensor.dtype not in FLOAT_DTYPES:
            raise LoraXSError(
                f"{source}: tensor {name} has dtype {str(tensor.dtype).removeprefix('torch.')}, not float32 or float16"
            )
        if not torch.isfinite(tensor).all():
            raise LoraXSError(f"{source}: tensor {name} holds NaN or Inf (training diverged? try a lower --lr)")
        if tensor.numel() and tensor.abs().max().item() > MAX_ABS_WEIGHT:
            raise LoraXSError(
                f"{source}: tensor {name} holds values beyond {MAX_ABS_WEIGHT:g} (training diverged? try a lower --lr)"
            )


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
    pooling = model_pooling(canonical_model_id(model_id)) if task == "seq-cls" else "pooler"
    if pooling != "pooler":  # absent = Hugging Face's classifier, as in files from before pooling
        extra.setdefault("pooling", pooling)
    if config.svd_method != "canonical":  # absent = the canonical SVD, so the factors can be derived
        extra.setdefault("svd_method", config.svd_method)
    if config.basis_dtype != "fp32":
        extra.setdefault("basis_dtype", config.basis_dtype)
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


def state_digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"|{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def adapter_to_bytes(state: dict[str, torch.Tensor], meta: AdapterMeta, source: str = "the adapter") -> bytes:
    """Refuses (LoraXSError) a state no loader would accept: non-finite or implausible weights."""
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    check_weights(state, f"not writing {source}")
    metadata = {
        "format": ADAPTER_FORMAT,
        "format_version": ADAPTER_FORMAT_VERSION,
        "state_sha256": state_digest(state),
        **meta.to_strings(),
    }
    metadata["metadata_sha256"] = metadata_digest(metadata)
    return save_bytes(state, metadata=metadata)


def save_adapter(
    path: str | Path, state: dict[str, torch.Tensor], meta: AdapterMeta, key_source: KeySource | None = None
) -> int:
    """Writes atomically; returns the file size in bytes. With `key_source`: encrypted at rest
    (shared/crypto/at_rest.py, one AEAD over the whole file, mode 0600)."""
    if key_source is not None:
        write_encrypted(path, adapter_to_bytes(state, meta, str(path)), key_source, encrypted_kind(meta))
        return Path(path).stat().st_size
    return write_atomically(path, adapter_to_bytes(state, meta, str(path)), "adapter")


def adapter_from_bytes(data: bytes, source: str) -> tuple[dict[str, torch.Tensor], AdapterMeta]:
    state, metadata = read_blob(data, source, "adapter")
    if metadata.get("format") != ADAPTER_FORMAT:
        raise LoraXSError(f"{source} is not a LoRA-XS adapter file (format {metadata.get('format')!r})")
    version = metadata.get("format_version")
    if version in UNCHECKED_VERSIONS:
        raise LoraXSError(
            f"{source} has adapter format version {version}, whose metadata carries no checksum; "
            "it is no longer read (train or save it again with this version)"
        )
    if version not in READABLE_VERSIONS:
        raise LoraXSError(
            f"{source} has adapter format version {str(version)[:20]!r}; "
            f"this version reads {', '.join(READABLE_VERSIONS)}"
        )
    if metadata.get("metadata_sha256") != metadata_digest(metadata):
        raise LoraXSError(f"{source} is corrupt: its metadata does not match its checksum")
    try:
        meta = AdapterMeta.from_strings(metadata)
    except (KeyError, TypeError, ValueError) as err:
        raise LoraXSError(f"{source} has malformed adapter metadata ({err})") from None
    check_weights(state, source)
    if metadata.get("state_sha256") != state_digest(state):
        raise LoraXSError(f"{source} is corrupt: its tensors do not match their checksum")
    for name, tensor in state.items():
        if name.endswith("lora_R") and tuple(tensor.shape) != (meta.rank, meta.rank):
            raise LoraXSError(f"{source}: {name} has shape {tuple(tensor.shape)}, not rank {meta.rank}")
    return state, meta


def load_adapter(path: str | Path, key_source: KeySource | None = None) -> tuple[dict[str, torch.Tensor], AdapterMeta]:
    """An adapter file, decrypted first when encrypted at rest (wrong key or any change:
    "authentication failed"; renamed, or of another kind than its header says: refused). When
    a key is given, a plaintext file is read only if it is a global adapter (what a server
    ships): a plaintext personal adapter may have been swapped in for the encrypted one."""
    data = read_file(path, "adapter")
    if not is_encrypted(data):
        state, meta = adapter_from_bytes(data, str(path))
        if key_source is not None and meta.extra.get("kind") != "global":
            raise LoraXSError(
                f"{path} is not encrypted, but a key is given: a personal adapter is read only "
                "encrypted (this one may have been swapped in)"
            )
        return state, meta
    if key_source is None:
        raise LoraXSError(f"{path} is encrypted: give --key-file or the passphrase ({PASSPHRASE_ENV})")
    state, meta = adapter_from_bytes(decrypt_bytes(data, key_source, str(path), name=Path(path).name), str(path))
    kind = header_kind(data)  # authentic: the header decrypted with the body
    if kind is not None and kind != encrypted_kind(meta):
        raise LoraXSError(f"{path}: its encrypted header says {kind!r}, but it holds a {encrypted_kind(meta)!r}")
    return state, meta


def encrypted_kind(meta: AdapterMeta) -> str:
    """What an encrypted adapter file's authenticated header says it holds."""
    return f"{ADAPTER_FORMAT}/{meta.extra.get('kind', '')}"


def check_adapter_matches(meta: AdapterMeta, source: str, base_model: str, fingerprint: str) -> None:
    """The adapter must belong to this base model and to this exact basis."""
    if meta.base_model != base_model:
        raise LoraXSError(
            f"{source} was trained on base model {meta.base_model!r}, not {base_model!r} "
            f"(pass --model {meta.base_model})"
        )
    if meta.basis_fingerprint != fingerprint:
        raise LoraXSError(
            f"{source} belongs to basis {meta.basis_fingerprint[:12]}, but the factors in use are "
            f"{fingerprint[:12]} (use the basis file it was trained with: --basis FILE)"
        )
