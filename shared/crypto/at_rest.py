"""Whole-file AEAD for personal adapter files kept on the device.

    file = header || AES-256-GCM(key, nonce, plaintext, associated data = header)
    header (passphrase) = b"LXSENC" | version 2 | kdf 1 (scrypt) | log2 N | r | p | salt 16 B | label | nonce 12 B
    header (key file)   = b"LXSENC" | version 2 | kdf 2 (raw)    | label | nonce 12 B
    label               = u8 length | kind (ASCII, e.g. "loraxs-adapter/personal") | u8 length | file name (UTF-8)

The key is scrypt(passphrase, salt, N, r, p) or the 32 bytes a key file holds as 64 hex
characters (nothing else: a password belongs in the passphrase, which goes through scrypt); a key
file that group or others can read is refused. The header is authenticated, so any change to it
or to the body fails like a wrong key: "authentication failed"; the kind and the name it was
written under are in it, so a reader can refuse a file of another kind, or one renamed or swapped
in. scrypt parameters read from a header are bounded (memory 128*r*N <= 256 MiB, p <= 4) before
any key derivation, so a crafted header cannot make the reader allocate gigabytes. Version 1
files (no label) are still read, with a warning.
"""

import getpass
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from shared.artifacts.untrusted_file import open_regular, read_untrusted
from shared.errors import LoraXSError

MAGIC, VERSION, READABLE_VERSIONS = b"LXSENC", 2, (1, 2)
KDF_SCRYPT, KDF_RAW = 1, 2
SALT_LEN, NONCE_LEN, KEY_LEN, TAG_LEN = 16, 12, 32, 16
SCRYPT_MAX_MEMORY, SCRYPT_MAX_P, SCRYPT_LOG2_N_RANGE = 256 * 2**20, 4, (10, 20)
PASSPHRASE_ENV = "LORAXS_PASSPHRASE"
MAX_KEY_FILE_BYTES = 1000  # 64 hex characters, with room for whitespace
MAX_ENCRYPTED_FILE_BYTES = 1024 * 2**20
AUTH_FAILED = "authentication failed"


class AtRestError(LoraXSError):
    """An encrypted file that cannot be read or written; one-line reason."""


@dataclass(frozen=True)
class KeySource:
    """Exactly one of a passphrase (scrypt with the cost below for new files) or a raw 32-byte key."""

    passphrase: bytes | None = field(default=None, repr=False)
    key: bytes | None = field(default=None, repr=False)
    log2_n: int = 17  # 128 MiB, ~0.35 s on a laptop core
    r: int = 8
    p: int = 1

    def __post_init__(self):
        if (self.passphrase is None) == (self.key is None):
            raise AtRestError("give either a passphrase or a key file, not both or neither")
        if self.passphrase is not None and not self.passphrase:
            raise AtRestError("the passphrase is empty")
        if self.key is not None and len(self.key) != KEY_LEN:
            raise AtRestError(f"a key must be {KEY_LEN} bytes")
        _check_scrypt(self.log2_n, self.r, self.p)


def passphrase_key(passphrase: str, log2_n: int = 17) -> KeySource:
    return KeySource(passphrase=passphrase.encode("utf-8"), log2_n=log2_n)


def passphrase_from_env(var: str = PASSPHRASE_ENV) -> KeySource | None:
    """The passphrase in environment variable `var`, or None when it is unset or empty."""
    value = os.environ.get(var)
    return passphrase_key(value) if value else None


def passphrase_from_prompt(confirm: bool, ask=getpass.getpass) -> KeySource:
    """Asks on the terminal (twice when `confirm`, i.e. when encrypting a new file)."""
    passphrase = ask("Adapter passphrase: ")
    if confirm and ask("Repeat passphrase: ") != passphrase:
        raise AtRestError("the passphrases do not match")
    return passphrase_key(passphrase)


def key_from_file(path: str | Path) -> KeySource:
    """A key file holds 64 hex characters (`openssl rand -hex 32 > FILE; chmod 600 FILE`) and is
    readable by its owner only."""
    try:
        data = read_untrusted(path, "key file", MAX_KEY_FILE_BYTES)  # never blocks on a pipe or a device
    except LoraXSError as err:
        raise AtRestError(str(err)) from None
    _check_private(path)
    text = data.decode("ascii", errors="replace").strip()
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise AtRestError(
            f"key file {path} must hold exactly 64 hex characters (openssl rand -hex 32); "
            f"for a password use a passphrase ({PASSPHRASE_ENV} or the prompt)"
        )
    return KeySource(key=bytes.fromhex(text))


def _check_private(path: str | Path) -> None:
    """Refuses a key file that group or others can read or write (like ssh, and the server key)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise AtRestError(f"cannot read key file {path}: {err.strerror}") from None
    if os.name == "posix" and mode & 0o077:
        raise AtRestError(f"key file {path} is accessible by others: chmod 600 it")


def encrypt_bytes(plaintext: bytes, key_source: KeySource, kind: str = "", name: str = "") -> bytes:
    """`kind` (what the plaintext is) and `name` (the file it goes to) are authenticated with it."""
    nonce, label = os.urandom(NONCE_LEN), _label(kind, name)
    if key_source.passphrase is not None:
        salt = os.urandom(SALT_LEN)
        params = bytes([key_source.log2_n, key_source.r, key_source.p])
        header = MAGIC + bytes([VERSION, KDF_SCRYPT]) + params + salt + label + nonce
        key = _scrypt(key_source.passphrase, salt, key_source.log2_n, key_source.r, key_source.p)
    else:
        header, key = MAGIC + bytes([VERSION, KDF_RAW]) + label + nonce, key_source.key
    return header + AESGCM(key).encrypt(nonce, bytes(plaintext), header)


def decrypt_bytes(
    blob: bytes, key_source: KeySource, source: str = "", kind: str | None = None, name: str | None = None
) -> bytes:
    """The plaintext, or AtRestError; a wrong key or any modified byte: "authentication failed".
    `kind` / `name`: what the authenticated header must say (not checked when None)."""
    where = f"{source}: " if source else ""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise AtRestError(f"{where}encrypted data must be bytes, got {type(blob).__name__}")
    if not is_encrypted(blob):
        raise AtRestError(f"{where}not an encrypted adapter file")
    if len(blob) < len(MAGIC) + 2 or blob[len(MAGIC)] not in READABLE_VERSIONS:
        raise AtRestError(f"{where}unsupported encrypted-file version")
    version, kdf, at = blob[len(MAGIC)], blob[len(MAGIC) + 1], len(MAGIC) + 2
    if kdf == KDF_SCRYPT:
        if len(blob) < at + 3 + SALT_LEN:
            raise AtRestError(f"{where}{AUTH_FAILED}")
        log2_n, r, p = blob[at], blob[at + 1], blob[at + 2]
        _check_scrypt(log2_n, r, p, where)
        if key_source.passphrase is None:
            raise AtRestError(f"{where}encrypted with a passphrase, but a key file was given")
        salt, at = blob[at + 3 : at + 3 + SALT_LEN], at + 3 + SALT_LEN
    elif kdf == KDF_RAW:
        if key_source.key is None:
            raise AtRestError(f"{where}encrypted with a key file, but a passphrase was given")
    else:
        raise AtRestError(f"{where}unknown key derivation {kdf} in the header")
    label, at = _read_label(blob, at) if version >= 2 else (None, at)
    nonce, header_len = blob[at : at + NONCE_LEN], at + NONCE_LEN
    if label is False or len(blob) < header_len + TAG_LEN:
        raise AtRestError(f"{where}{AUTH_FAILED}")
    key = _scrypt(key_source.passphrase, salt, log2_n, r, p) if kdf == KDF_SCRYPT else key_source.key
    try:
        plaintext = AESGCM(key).decrypt(bytes(nonce), bytes(blob[header_len:]), bytes(blob[:header_len]))
    except Exception:
        raise AtRestError(f"{where}{AUTH_FAILED}") from None
    _check_label(label, kind, name, where)
    return plaintext


def header_kind(blob: bytes) -> str | None:
    """The kind an encrypted file's header names (authentic only once it decrypted), None for version 1."""
    try:
        at = len(MAGIC) + 2 + (3 + SALT_LEN if blob[len(MAGIC) + 1] == KDF_SCRYPT else 0)
        label, _ = _read_label(blob, at) if blob[len(MAGIC)] >= 2 else (None, 0)
        return label[0] if label else None
    except Exception:
        return None


def _label(kind: str, name: str) -> bytes:
    kind_bytes, name_bytes = kind.encode("ascii"), name.encode("utf-8")
    if len(kind_bytes) > 255 or len(name_bytes) > 255:
        raise AtRestError("the kind and the file name must each fit in 255 bytes")
    return bytes([len(kind_bytes)]) + kind_bytes + bytes([len(name_bytes)]) + name_bytes


def _read_label(blob: bytes, at: int) -> tuple[tuple[str, str] | bool, int]:
    """((kind, name), offset after the label), or (False, at) when it cannot be read."""
    try:
        kind_len = blob[at]
        kind = bytes(blob[at + 1 : at + 1 + kind_len]).decode("ascii")
        name_at = at + 1 + kind_len
        name_len = blob[name_at]
        name = bytes(blob[name_at + 1 : name_at + 1 + name_len]).decode("utf-8")
        return (kind, name), name_at + 1 + name_len
    except Exception:
        return False, at


def _check_label(label: tuple[str, str] | None, kind: str | None, name: str | None, where: str) -> None:
    if label is None:
        if kind is not None or name is not None:
            print(
                f"warning: {where}encrypted by an older version: its kind and file name are not "
                "authenticated (save it again to upgrade)",
                file=sys.stderr,
            )
        return
    if kind is not None and label[0] != kind:
        raise AtRestError(f"{where}holds a {label[0] or 'file of no stated kind'}, not a {kind}")
    if name is not None and label[1] != name:
        raise AtRestError(
            f"{where}was encrypted as {label[1]!r}: renamed or swapped with another file "
            "(give it back its name to read it)"
        )


def is_encrypted(blob_or_path: bytes | str | Path) -> bool:
    """True when the bytes (or the file's first bytes) start with the magic."""
    if isinstance(blob_or_path, (bytes, bytearray, memoryview)):
        return bytes(blob_or_path[: len(MAGIC)]) == MAGIC
    try:
        with open_regular(blob_or_path, "file", MAX_ENCRYPTED_FILE_BYTES) as f:
            return f.read(len(MAGIC)) == MAGIC
    except LoraXSError as err:
        raise AtRestError(f"cannot tell whether it is encrypted: {err}") from None
    except OSError as err:
        raise AtRestError(f"cannot read {blob_or_path}: {err.strerror}") from None


def write_encrypted(path: str | Path, plaintext: bytes, key_source: KeySource, kind: str = "") -> None:
    """Encrypts first (the kind and the file's name in the header), then replaces `path`
    atomically (mode 0600): a failure leaves the old file."""
    path = Path(path)
    blob = encrypt_bytes(plaintext, key_source, kind, path.name)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if "tmp" in locals() and os.path.exists(tmp):
            os.unlink(tmp)
        raise AtRestError(f"cannot write {path}: {err.strerror}") from None
    except BaseException:  # a stop signal mid-write (shared/signals.py): no temp file left behind
        if "tmp" in locals() and os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_scrypt(log2_n: int, r: int, p: int, where: str = "") -> None:
    low, high = SCRYPT_LOG2_N_RANGE
    if not (low <= log2_n <= high and 1 <= r and 1 <= p <= SCRYPT_MAX_P and 128 * r * 2**log2_n <= SCRYPT_MAX_MEMORY):
        raise AtRestError(f"{where}scrypt parameters N=2^{log2_n}, r={r}, p={p} are outside the allowed bounds")


def _scrypt(passphrase: bytes, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=bytes(salt), length=KEY_LEN, n=2**log2_n, r=r, p=p).derive(passphrase)
