"""Where the key of an encrypted personal adapter comes from, for `client.run` and `client.export`.

    --key-file FILE           64 hex characters, mode 0600: `openssl rand -hex 32 > FILE; chmod 600 FILE`
    LORAXS_PASSPHRASE=...     a passphrase (scrypt), for scripts
    otherwise                 a passphrase asked on the terminal (twice when encrypting)
A key is looked for only when one is needed: `--encrypt-at-rest`, or an adapter to read that is
encrypted (shared/crypto/at_rest.py: the whole file is one AEAD ciphertext). A key that is given
(`--key-file`, or the passphrase in the environment) means the adapter read must be encrypted:
a plaintext one is refused; with `--encrypt-at-rest` (the key is for the output) a plaintext
start adapter must be a global one, as a server ships it (shared/artifacts/adapter_file.py).
"""

import argparse
import sys
from pathlib import Path

from shared.crypto.at_rest import (
    PASSPHRASE_ENV,
    KeySource,
    is_encrypted,
    key_from_file,
    passphrase_from_env,
    passphrase_from_prompt,
)
from shared.errors import LoraXSError


def add_key_flags(parser: argparse.ArgumentParser, encrypt: bool) -> None:
    group = parser.add_argument_group("personal adapters encrypted at rest")
    if encrypt:
        group.add_argument(
            "--encrypt-at-rest",
            action="store_true",
            default=None,
            help="write the personal adapter encrypted (AES-256-GCM over the whole file)",
        )
    group.add_argument(
        "--key-file",
        metavar="FILE",
        help=f"key file for encrypted adapters: 64 hex characters, mode 0600 (default: passphrase "
        f"from {PASSPHRASE_ENV} or a prompt)",
    )


def key_source(args: argparse.Namespace, read: Path | None = None) -> KeySource | None:
    """The key for `--encrypt-at-rest` and/or an encrypted adapter `read`; None when none is needed."""
    encrypt = getattr(args, "encrypt_at_rest", False)
    needed = encrypt or (read is not None and Path(read).is_file() and is_encrypted(read))
    if not needed:
        if args.key_file:
            raise LoraXSError(
                "--key-file is only for encrypted adapters (--encrypt-at-rest, or an encrypted --adapter)"
            )
        if read is not None and passphrase_from_env() is not None:
            raise LoraXSError(
                f"{read} is not encrypted, but a key is given ({PASSPHRASE_ENV}): refusing a plaintext "
                f"adapter (it may have been swapped in); unset {PASSPHRASE_ENV} to read it"
            )
        return None
    if args.key_file:
        return key_from_file(args.key_file)
    from_env = passphrase_from_env()
    if from_env is not None:
        return from_env
    if not sys.stdin.isatty():
        raise LoraXSError(f"an encrypted adapter needs a key: --key-file FILE, or the passphrase in {PASSPHRASE_ENV}")
    return passphrase_from_prompt(confirm=encrypt)
