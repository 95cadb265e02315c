"""Helpers shared by several test modules (fixtures live in conftest.py)."""

import os
from pathlib import Path

from shared.crypto.at_rest import KeySource, key_from_file


def make_key_file(path: Path) -> KeySource:
    """A fresh random key file, as a user makes one (`head -c 32 /dev/urandom | xxd -p -c 64`)."""
    path.write_text(os.urandom(32).hex() + "\n")
    return key_from_file(path)
