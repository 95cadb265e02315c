"""Where a client finds its frozen factors: a `--basis` file, the on-disk cache a federation
left (keyed by fingerprint), or a fresh SVD of the base model; the fingerprint must match.

Cache layout: <data-dir>/.loraxs/basis/<fingerprint>.safetensors for a device's data folder,
and $LORAXS_CACHE/basis/ (default ~/.cache/loraxs/basis/) for everything else.
"""

import os
from pathlib import Path

from shared.basis_file import load_basis, save_basis
from shared.errors import LoraXSError
from shared.loraxs.basis import Basis

STATE_FOLDER = ".loraxs"  # per data folder: cached factors and the personal adapter of a federation
PERSONAL_ADAPTER = "personal_adapter.safetensors"


def user_cache_dir() -> Path:
    return Path(os.environ.get("LORAXS_CACHE") or Path.home() / ".cache" / "loraxs")


def basis_cache_dirs(data_dir: str | Path | None) -> list[Path]:
    dirs = [Path(data_dir) / STATE_FOLDER / "basis"] if data_dir else []
    return dirs + [user_cache_dir() / "basis"]


def cached_basis_path(cache_dir: Path, fingerprint: str) -> Path:
    return Path(cache_dir) / f"{fingerprint}.safetensors"


def store_basis(cache_dir: str | Path, basis: Basis, base_model: str) -> Path:
    path = cached_basis_path(Path(cache_dir), basis.fingerprint)
    if not path.exists():
        save_basis(path, basis, base_model)
    return path


def find_cached_basis(fingerprint: str, dirs: list[Path]) -> Basis | None:
    """The cached factors named `fingerprint`; a corrupt cache entry counts as missing."""
    for cache_dir in dirs:
        path = cached_basis_path(cache_dir, fingerprint)
        if path.is_file():
            try:
                basis, _ = load_basis(path)
            except LoraXSError:
                continue
            if basis.fingerprint == fingerprint:
                return basis
    return None


def resolve_basis(
    fingerprint: str | None, basis_file: str | None, data_dir: str | Path | None
) -> Basis | None:
    """Factors for an adapter with `fingerprint` (None: no adapter yet).

    Returns the `--basis` file's factors or a cached copy; None means "compute them from the
    base model" (the caller must then check the computed fingerprint, see `check_fingerprint`).
    """
    if basis_file:
        basis, _ = load_basis(basis_file)
        check_fingerprint(basis, fingerprint, f"basis file {basis_file}")
        return basis
    if fingerprint:
        return find_cached_basis(fingerprint, basis_cache_dirs(data_dir))
    return None


def check_fingerprint(basis: Basis, expected: str | None, source: str) -> None:
    if expected and basis.fingerprint != expected:
        raise LoraXSError(
            f"the adapter belongs to basis {expected[:12]}, but {source} has {basis.fingerprint[:12]} "
            "(SVD results differ across machines: pass the basis file the server shipped, --basis FILE)"
        )
