"""Where artifacts are cached: the user cache and a data folder's state folder.

$LORAXS_CACHE (default ~/.cache/loraxs) is read here and nowhere else. Frozen factors are cached
by fingerprint in <data-dir>/.loraxs/basis/ for a device's data folder and in
$LORAXS_CACHE/basis/ for everything else; the review set lives in $LORAXS_CACHE too.
"""

import os
import sys
from pathlib import Path

from shared.artifacts.basis_file import load_basis, save_basis
from shared.errors import LoraXSError
from shared.loraxs.basis import Basis

STATE_FOLDER = ".loraxs"  # per data folder: cached factors, and the ClientApp's state in a federation


def user_cache_dir() -> Path:
    return Path(os.environ.get("LORAXS_CACHE") or Path.home() / ".cache" / "loraxs").expanduser()


def state_basis_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / STATE_FOLDER / "basis"


def basis_cache_dirs(data_dir: str | Path | None) -> list[Path]:
    dirs = [state_basis_dir(data_dir)] if data_dir else []
    return dirs + [user_cache_dir() / "basis"]


def cached_basis_path(cache_dir: Path, fingerprint: str) -> Path:
    return Path(cache_dir) / f"{fingerprint}.safetensors"


def store_basis(cache_dir: str | Path, basis: Basis, base_model: str) -> Path:
    path = cached_basis_path(Path(cache_dir), basis.fingerprint)
    if not path.exists():
        save_basis(path, basis, base_model)
    return path


def store_basis_somewhere(dirs: list[Path], basis: Basis, base_model: str) -> Path | None:
    """Caches the factors in the first of `dirs` that can be written (a read-only data folder falls
    back to the user cache, with a note on stderr); None when none can, which is never fatal."""
    for cache_dir in dirs:
        try:
            return store_basis(cache_dir, basis, base_model)
        except (LoraXSError, OSError) as err:
            print(f"note: factors not cached in {cache_dir}: {err}", file=sys.stderr)
    return None


def find_cached_basis(fingerprint: str, dirs: list[Path]) -> Basis | None:
    """The cached factors named `fingerprint`; a corrupt or unreadable entry counts as missing."""
    for cache_dir in dirs:
        path = cached_basis_path(cache_dir, fingerprint)
        try:
            if not path.is_file():
                continue
            basis, _ = load_basis(path)
        except Exception:
            continue
        if basis.fingerprint == fingerprint:
            return basis
    return None
