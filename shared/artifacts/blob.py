"""Reading and writing safetensors blobs with metadata, as adapter and basis files use them, and
the check every command makes on an output file before its work."""

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes

from shared.errors import LoraXSError


def read_blob(data: bytes, source: str, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """-> (tensors, metadata); any malformed or truncated blob raises one LoraXSError."""
    try:
        if len(data) < 8:
            raise ValueError("too short")
        size = int.from_bytes(data[:8], "little")
        if size > len(data) - 8:
            raise ValueError("header runs past the end")
        metadata = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
        tensors = load_bytes(data)
    except (ValueError, SafetensorError, UnicodeDecodeError, AttributeError) as err:
        raise LoraXSError(f"{source} is not a valid {kind} file (truncated or corrupt: {err})") from None
    return tensors, metadata


def read_file(path: str | Path, kind: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise LoraXSError(f"{kind} file {path} does not exist")
    return path.read_bytes()


def write_atomically(path: str | Path, data: bytes, kind: str) -> int:
    """Temp file + rename, so a crash never leaves half a file; returns the bytes written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as err:
        raise LoraXSError(f"cannot write {kind} {path}: {err.strerror or err}") from None
    return len(data)


def check_output_file(out: Path, force: bool = False, hint: str = "a file name") -> None:
    """Before any heavy work: `out` names a file (not a folder) that may be written."""
    if out.is_dir():
        raise LoraXSError(f"--out {out} is a folder; give {hint}")
    if out.exists() and not force:
        raise LoraXSError(f"{out} already exists; pass --force to overwrite it")
