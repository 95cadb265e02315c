"""Reading and writing safetensors blobs with metadata, as adapter and basis files use them, and
the check every command makes on an output file before its work.

Outside bytes are bounded before they are read: a file over its kind's cap, or a header over
MAX_HEADER_BYTES, is refused with one line, never read whole."""

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes

from shared.artifacts.untrusted_file import read_untrusted
from shared.errors import LoraXSError

MiB = 2**20
MAX_HEADER_BYTES = 1 * MiB  # a safetensors JSON header (names, shapes, metadata)
MAX_FILE_BYTES = {"adapter": 64 * MiB, "basis": 1024 * MiB}  # other kinds: DEFAULT_MAX_FILE_BYTES
DEFAULT_MAX_FILE_BYTES = 64 * MiB


def read_blob(data: bytes, source: str, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """-> (tensors, metadata: str -> str); any malformed or truncated blob raises one LoraXSError."""
    try:
        if len(data) < 8:
            raise ValueError("too short")
        size = int.from_bytes(data[:8], "little")
        if size > len(data) - 8:
            raise ValueError("header runs past the end")
        if size > MAX_HEADER_BYTES:
            raise ValueError(f"header of {size} bytes, more than {MAX_HEADER_BYTES}")
        header = json.loads(data[8 : 8 + size])
        metadata = header.get("__metadata__") or {}
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise ValueError("metadata is not a table of strings")
        tensors = load_bytes(data)
    except (
        ValueError,
        SafetensorError,
        UnicodeDecodeError,
        AttributeError,
        TypeError,
        RecursionError,
        OverflowError,
        MemoryError,
    ) as err:
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise LoraXSError(f"{source} is not a valid {kind} file (truncated or corrupt: {reason})") from None
    return tensors, metadata


def read_file(path: str | Path, kind: str, max_bytes: int | None = None) -> bytes:
    """The bytes of `path`, refused with one line when missing, unreadable, not a regular file
    (a pipe or a device never blocks: shared/artifacts/untrusted_file.py) or over the cap."""
    return read_untrusted(path, f"{kind} file", max_bytes or MAX_FILE_BYTES.get(kind, DEFAULT_MAX_FILE_BYTES))


def check_output_file(out: Path, force: bool = False, hint: str = "a file name") -> None:
    """Before any heavy work: `out` names a file (not a folder) that may be written, in a folder
    that exists or can be made and that takes new files."""
    if out.is_dir():
        raise LoraXSError(f"--out {out} is a folder; give {hint}")
    if out.exists() and not force:
        raise LoraXSError(f"{out} already exists; pass --force to overwrite it")
    check_writable_folder(out.parent)


def check_writable_folder(folder: Path) -> None:
    """The nearest existing folder of `folder` (itself or a parent, which the writer creates)
    takes a new file: probed with a temporary file, so a read-only folder or file system is
    refused before any work, whoever runs it."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise LoraXSError(f"output folder {folder} cannot be made: {existing} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".loraxs-write-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise LoraXSError(f"cannot write to output folder {existing}: {err.strerror or err}") from None
