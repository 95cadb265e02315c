"""Adapter files: safetensors holding only the adapter state, with self-describing metadata.

Loading checks the format, the integrity of the bytes (sha256 in the metadata), and, against a
model, the base model id, the basis fingerprint and every tensor's shape. Never pickle.
"""

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save as save_bytes

from shared.artifacts.blob import read_blob, read_file, write_atomically
from shared.base_models import canonical_model_id
from shared.crypto.at_rest import PASSPHRASE_ENV, KeySource, decrypt_bytes, is_encrypted, write_encrypted
from shared.errors import LoraXSError
from shared.loraxs.basis import Basis
from shared.loraxs.config import LoraXSConfig, default_targets

ADAPTER_FORMAT = "loraxs-adapter"
ADAPTER_FORMAT_VERSION = "1"


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
        values = {k: json.loads(strings[k]) for k in cls.__dataclass_fields__}
        values["targets"] = tuple(values["targets"])
        if values["labels"] is not None:
            values["labels"] = tuple(values["labels"])
        return cls(**values)


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


def state_digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"|{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def adapter_to_bytes(state: dict[str, torch.Tensor], meta: AdapterMeta) -> bytes:
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    metadata = {
        "format": ADAPTER_FORMAT,
        "format_version": ADAPTER_FORMAT_VERSION,
        "state_sha256": state_digest(state),
        **meta.to_strings(),
    }
    return save_bytes(state, metadata=metadata)


def save_adapter(path: str | Path, state: dict[str, torch.Tensor], meta: AdapterMeta,
                 key_source: KeySource | None = None) -> int:
    """Writes atomically; returns the file size in bytes. With `key_source`: encrypted at rest
    (shared/crypto/at_rest.py, one AEAD over the whole file, mode 0600)."""
    if key_source is not None:
        write_encrypted(path, adapter_to_bytes(state, meta), key_source)
        return Path(path).stat().st_size
    return write_atomically(path, adapter_to_bytes(state, meta), "adapter")


def adapter_from_bytes(data: bytes, source: str) -> tuple[dict[str, torch.Tensor], AdapterMeta]:
    state, metadata = read_blob(data, source, "adapter")
    if metadata.get("format") != ADAPTER_FORMAT:
        raise LoraXSError(f"{source} is not a LoRA-XS adapter file (format {metadata.get('format')!r})")
    if metadata.get("format_version") != ADAPTER_FORMAT_VERSION:
        raise LoraXSError(
            f"{source} has adapter format version {metadata.get('format_version')!r}; "
            f"this version reads {ADAPTER_FORMAT_VERSION}"
        )
    try:
        meta = AdapterMeta.from_strings(metadata)
    except (KeyError, TypeError, ValueError) as err:
        raise LoraXSError(f"{source} has malformed adapter metadata ({err})") from None
    if metadata.get("state_sha256") != state_digest(state):
        raise LoraXSError(f"{source} is corrupt: its tensors do not match their checksum")
    for name, tensor in state.items():
        if name.endswith("lora_R") and tuple(tensor.shape) != (meta.rank, meta.rank):
            raise LoraXSError(f"{source}: {name} has shape {tuple(tensor.shape)}, not rank {meta.rank}")
        if not torch.isfinite(tensor).all():
            raise LoraXSError(f"{source}: tensor {name} holds NaN or Inf")
    return state, meta


def load_adapter(path: str | Path, key_source: KeySource | None = None) -> tuple[dict[str, torch.Tensor], AdapterMeta]:
    """An adapter file, decrypted first when encrypted at rest (wrong key or any change:
    "authentication failed")."""
    data = read_file(path, "adapter")
    if is_encrypted(data):
        if key_source is None:
            raise LoraXSError(f"{path} is encrypted: give --key-file or the passphrase ({PASSPHRASE_ENV})")
        data = decrypt_bytes(data, key_source, str(path))
    return adapter_from_bytes(data, str(path))


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
