"""The factor bundle as a file: every frozen (B, A) pair with its fingerprint (safetensors)."""

from pathlib import Path

from safetensors.torch import save as save_bytes

from shared.errors import LoraXSError
from shared.artifacts.blob import read_blob, read_file, write_atomically
from shared.loraxs.basis import Basis

BASIS_FORMAT = "loraxs-basis"
BASIS_FORMAT_VERSION = "1"


def basis_to_tensors(basis: Basis) -> dict:
    tensors = {}
    for name, (lora_B, lora_A) in basis.factors.items():
        tensors[f"{name}.lora_B"] = lora_B.contiguous()  # (out, r)
        tensors[f"{name}.lora_A"] = lora_A.contiguous()  # (r, in)
    return tensors


def basis_from_tensors(tensors: dict, rank: int) -> Basis:
    names = sorted({key.rsplit(".", 1)[0] for key in tensors})
    try:
        factors = {n: (tensors[f"{n}.lora_B"].float(), tensors[f"{n}.lora_A"].float()) for n in names}
    except KeyError as err:
        raise LoraXSError(f"factor bundle misses {err.args[0]}") from None
    return Basis(rank=rank, factors=factors)


def basis_to_bytes(basis: Basis, base_model: str) -> bytes:
    metadata = {
        "format": BASIS_FORMAT,
        "format_version": BASIS_FORMAT_VERSION,
        "base_model": base_model,
        "rank": str(basis.rank),
        "fingerprint": basis.fingerprint,
    }
    return save_bytes(basis_to_tensors(basis), metadata=metadata)


def save_basis(path: str | Path, basis: Basis, base_model: str) -> int:
    return write_atomically(path, basis_to_bytes(basis, base_model), "basis")


def basis_from_bytes(data: bytes, source: str) -> tuple[Basis, str]:
    """-> (basis, base model id); the stored fingerprint must match the bytes."""
    tensors, metadata = read_blob(data, source, "basis")
    if metadata.get("format") != BASIS_FORMAT or metadata.get("format_version") != BASIS_FORMAT_VERSION:
        raise LoraXSError(f"{source} is not a LoRA-XS basis file (format {metadata.get('format')!r})")
    basis = basis_from_tensors(tensors, int(metadata["rank"]))
    if basis.fingerprint != metadata.get("fingerprint"):
        raise LoraXSError(f"{source} is corrupt: its factors do not match their fingerprint")
    return basis, metadata.get("base_model", "")


def load_basis(path: str | Path) -> tuple[Basis, str]:
    return basis_from_bytes(read_file(path, "basis"), str(path))
