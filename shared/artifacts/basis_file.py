"""The factor bundle as a file: every frozen (B, A) pair with its fingerprint (safetensors).

Loading checks the format, the rank (a positive integer), every factor's dtype, shape and
finiteness, and the fingerprint; saving refuses non-finite factors."""

from pathlib import Path

import torch
from safetensors.torch import save as save_bytes

from shared.artifacts.atomic_write import write_atomically
from shared.artifacts.blob import read_blob, read_file
from shared.errors import LoraXSError
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
    """Every B (out, r) and A (r, in) pair, float32, finite; LoraXSError otherwise."""
    names = sorted({key.rsplit(".", 1)[0] for key in tensors})
    try:
        factors = {n: (tensors[f"{n}.lora_B"], tensors[f"{n}.lora_A"]) for n in names}
    except KeyError as err:
        raise LoraXSError(f"factor bundle misses {err.args[0]}") from None
    for name, (lora_B, lora_A) in factors.items():
        if not (lora_B.dtype.is_floating_point and lora_A.dtype.is_floating_point):
            raise LoraXSError(f"factor bundle: {name} holds {lora_B.dtype} / {lora_A.dtype}, not floats")
        if lora_B.dim() != 2 or lora_A.dim() != 2 or lora_B.shape[1] != rank or lora_A.shape[0] != rank:
            raise LoraXSError(
                f"factor bundle: {name} has shapes {tuple(lora_B.shape)} / "
                f"{tuple(lora_A.shape)}, not (out, {rank}) / ({rank}, in)"
            )
        if not (torch.isfinite(lora_B).all() and torch.isfinite(lora_A).all()):
            raise LoraXSError(f"factor bundle: {name} holds NaN or Inf")
    return Basis(rank=rank, factors={n: (b.float(), a.float()) for n, (b, a) in factors.items()})


def basis_to_bytes(basis: Basis, base_model: str) -> bytes:
    if not all(torch.isfinite(t).all() for pair in basis.factors.values() for t in pair):
        raise LoraXSError("not writing a basis whose factors hold NaN or Inf")
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
    rank = metadata.get("rank", "")
    if not (rank.isascii() and rank.isdigit() and len(rank) <= 4 and 1 <= int(rank) <= 4096):
        raise LoraXSError(f"{source} has malformed metadata: 'rank' is {rank[:20]!r}, not a positive integer")
    try:
        basis = basis_from_tensors(tensors, int(rank))
    except LoraXSError as err:
        raise LoraXSError(f"{source}: {err}") from None
    if basis.fingerprint != metadata.get("fingerprint"):
        raise LoraXSError(f"{source} is corrupt: its factors do not match their fingerprint")
    return basis, metadata.get("base_model", "")


def load_basis(path: str | Path) -> tuple[Basis, str]:
    return basis_from_bytes(read_file(path, "basis"), str(path))
