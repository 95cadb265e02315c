"""Adapter files (shared/artifacts/adapter_file.py's format, version 2) read and written from
numpy arrays, without torch: what a device training with onnxruntime writes and starts from.

The same bytes as the PyTorch writer: safetensors with the metadata strings of
`AdapterMeta.to_strings()`, `state_sha256` over the tensors as `adapter_file.state_digest` takes
it, and `metadata_sha256` over the metadata; tests/test_onnx_training.py reads a file written
here with `adapter_file.load_adapter` and checks the digests against it.
"""

import hashlib
import json
from pathlib import Path

import numpy as np

from shared.artifacts.atomic_write import write_atomically
from shared.errors import LoraXSError

ADAPTER_FORMAT, ADAPTER_FORMAT_VERSION = "loraxs-adapter", "2"
MAX_ABS_WEIGHT = 1e4  # as adapter_file.MAX_ABS_WEIGHT
MAX_ADAPTER_BYTES = 64 * 2**20
TORCH_DTYPE_NAMES = {np.dtype(np.float32): "torch.float32"}  # how the PyTorch digest names a dtype


def state_digest(state: dict[str, np.ndarray]) -> str:
    """adapter_file.state_digest of the same float32 tensors."""
    digest = hashlib.sha256()
    for name in sorted(state):
        value = np.ascontiguousarray(state[name])
        digest.update(f"|{name}|{tuple(value.shape)}|{TORCH_DTYPE_NAMES[value.dtype]}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def metadata_digest(metadata: dict[str, str]) -> str:
    """adapter_file.metadata_digest: sha256 over every entry but itself, sorted by key."""
    items = sorted((k, v) for k, v in metadata.items() if k != "metadata_sha256")
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def check_arrays(state: dict[str, np.ndarray], source: str) -> None:
    for name, value in state.items():
        if value.dtype != np.float32:
            raise LoraXSError(f"{source}: tensor {name} has dtype {value.dtype}, not float32")
        if not np.isfinite(value).all():
            raise LoraXSError(f"{source}: tensor {name} holds NaN or Inf (training diverged? try a lower --lr)")
        if value.size and float(np.abs(value).max()) > MAX_ABS_WEIGHT:
            raise LoraXSError(
                f"{source}: tensor {name} holds values beyond {MAX_ABS_WEIGHT:g} (training diverged? try a lower --lr)"
            )


def adapter_bytes(state: dict[str, np.ndarray], meta_strings: dict[str, str], source: str) -> bytes:
    """meta_strings: `AdapterMeta.to_strings()` (base_model, task, rank, ... as JSON strings)."""
    from safetensors.numpy import save

    state = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}
    check_arrays(state, f"not writing {source}")
    metadata = {
        "format": ADAPTER_FORMAT,
        "format_version": ADAPTER_FORMAT_VERSION,
        "state_sha256": state_digest(state),
        **meta_strings,
    }
    metadata["metadata_sha256"] = metadata_digest(metadata)
    return save(state, metadata=metadata)


def write_adapter(path: str | Path, state: dict[str, np.ndarray], meta_strings: dict[str, str]) -> int:
    """Atomically (temp file + rename); -> bytes written."""
    path = Path(path)
    return write_atomically(path, adapter_bytes(state, meta_strings, str(path)), "adapter")


def read_adapter_arrays(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """An unencrypted float32 adapter file -> (tensors, metadata strings), its checksums checked.
    Anything else is one LoraXSError line."""
    from safetensors.numpy import load

    path = Path(path).expanduser()
    try:
        if not path.is_file():
            raise LoraXSError(f"adapter file {path} does not exist")
        if path.stat().st_size > MAX_ADAPTER_BYTES:
            raise LoraXSError(f"adapter file {path} is larger than an adapter can be")
        data = path.read_bytes()
    except OSError as err:
        raise LoraXSError(f"cannot read adapter file {path}: {err.strerror or err}") from None
    try:
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size]) if 8 <= 8 + size <= len(data) and size <= 2**20 else None
        metadata = header.get("__metadata__") if isinstance(header, dict) else None
        state = load(data)
    except Exception:  # safetensors and json raise several types on a bad file
        metadata, state = None, None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise LoraXSError(f"{path} is not a LoRA-XS adapter file (an encrypted one needs --runtime torch)")
    if metadata.get("format") != ADAPTER_FORMAT or metadata.get("format_version") != ADAPTER_FORMAT_VERSION:
        raise LoraXSError(
            f"{path} is not a version-{ADAPTER_FORMAT_VERSION} LoRA-XS adapter file "
            "(older files: save them again with --runtime torch)"
        )
    if metadata.get("metadata_sha256") != metadata_digest(metadata):
        raise LoraXSError(f"{path} is corrupt: its metadata does not match its checksum")
    if any(v.dtype != np.float32 for v in state.values()):
        raise LoraXSError(f"{path} holds tensors other than float32; convert it with --runtime torch")
    check_arrays(state, str(path))
    if metadata.get("state_sha256") != state_digest(state):
        raise LoraXSError(f"{path} is corrupt: its tensors do not match their checksum")
    return state, metadata
