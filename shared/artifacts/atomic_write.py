"""Replace a file atomically (temp file in its folder + rename): a failure leaves the old file.
No torch here: the device side writes adapters with it too."""

import os
import tempfile
from pathlib import Path

from shared.errors import LoraXSError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomically(path: str | Path, data: bytes, kind: str) -> int:
    """A fresh temp file in the same folder (mkstemp: never an existing name, never a symlink),
    then a rename, so a crash never leaves half a file; returns the bytes written."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_umask())  # as a plain open() would create it
            handle.write(data)
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise LoraXSError(f"cannot write {kind} {path}: {err.strerror or err}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return len(data)
