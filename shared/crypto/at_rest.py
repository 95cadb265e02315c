"""Whole-file AEAD for personal adapter files kept on the device.

    file = header || AES-256-GCM(key, nonce, plaintext, associated data = header)
    header (passphrase) = b"LXSENC" | version 1 | kdf 1 (scrypt) | log2 N | r | p | salt 16 B | nonce 12 B
    header (key file)   = b"LXSENC" | version 1 | kdf 2 (raw)    | nonce 12 B

The key is scrypt(passphrase, salt, N, r, p) or the 32 bytes of a key file. The header is
authenticated, so any change to it or to the body fails like a wrong key: "authentication
failed". scrypt parameters read from a header are bounded (memory 128*r*N <= 256 MiB, p <= 4)
before any key derivation, so a crafted header cannot make the reader allocate gigabytes.
"""

import getpass
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from shared.errors import LoraXSError

MAGIC, VERSION = b"LXSENC", 1
KDF_SCRYPT, KDF_RAW = 1, 2
SALT_LEN, NONCE_LEN, KEY_LEN, TAG_LEN = 16, 12, 32, 16
SCRYPT_MAX_MEMORY, SCRYPT_MAX_P, SCRYPT_LOG2_N_RANGE = 256 * 2**20, 4, (10, 20)
PASSPHRASE_ENV = "LORAXS_PASSPHRASE"
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
    """A key file holds 32 raw bytes or 64 hex characters (`openssl rand -hex 32 > key`)."""
    try:
        data = Path(path).read_bytes()[:1000]
    except OSError as err:
        raise AtRestError(f"cannot read key file {path}: {err.strerror}") from None
    if len(data) != KEY_LEN:
        try:
            data = bytes.fromhex(data.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise AtRestError(f"key file {path} holds neither 32 raw bytes nor 64 hex characters") from None
    if len(data) != KEY_LEN:
        raise AtRestError(f"key file {path} holds {len(data)} bytes, expected {KEY_LEN}")
    return KeySource(key=data)


def encrypt_bytes(plaintext: bytes, key_source: KeySource) -> bytes:
    nonce = os.urandom(NONCE_LEN)
    if key_source.passphrase is not None:
        salt = os.urandom(SALT_LEN)
        params = bytes([key_source.log2_n, key_source.r, key_source.p])
        header = MAGIC + bytes([VERSION, KDF_SCRYPT]) + params + salt + nonce
        key = _scrypt(key_source.passphrase, salt, key_source.log2_n, key_source.r, key_source.p)
    else:
        header, key = MAGIC + bytes([VERSION, KDF_RAW]) + nonce, key_source.key
    return header + AESGCM(key).encrypt(nonce, bytes(plaintext), header)


def decrypt_bytes(blob: bytes, key_source: KeySource, source: str = "") -> bytes:
    """The plaintext, or AtRestError; a wrong key or any modified byte: "authentication failed"."""
    where = f"{source}: " if source else ""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise AtRestError(f"{where}encrypted data must be bytes, got {type(blob).__name__}")
    if not is_encrypted(blob):
        raise AtRestError(f"{where}not an encrypted adapter file")
    if len(blob) < len(MAGIC) + 2 or blob[len(MAGIC)] != VERSION:
        raise AtRestError(f"{where}unsupported encrypted-file version")
    kdf, rest = blob[len(MAGIC) + 1], blob[len(MAGIC) + 2 :]
    if kdf == KDF_SCRYPT:
        if len(rest) < 3 + SALT_LEN + NONCE_LEN + TAG_LEN:
            raise AtRestError(f"{where}{AUTH_FAILED}")
        log2_n, r, p = rest[0], rest[1], rest[2]
        _check_scrypt(log2_n, r, p, where)
        if key_source.passphrase is None:
            raise AtRestError(f"{where}encrypted with a passphrase, but a key file was given")
        salt, nonce = rest[3 : 3 + SALT_LEN], rest[3 + SALT_LEN : 3 + SALT_LEN + NONCE_LEN]
        key, header_len = _scrypt(key_source.passphrase, salt, log2_n, r, p), len(MAGIC) + 5 + SALT_LEN + NONCE_LEN
    elif kdf == KDF_RAW:
        if key_source.key is None:
            raise AtRestError(f"{where}encrypted with a key file, but a passphrase was given")
        key, nonce, header_len = key_source.key, rest[:NONCE_LEN], len(MAGIC) + 2 + NONCE_LEN
    else:
        raise AtRestError(f"{where}unknown key derivation {kdf} in the header")
    if len(blob) < header_len + TAG_LEN:
        raise AtRestError(f"{where}{AUTH_FAILED}")
    try:
        return AESGCM(key).decrypt(bytes(nonce), bytes(blob[header_len:]), bytes(blob[:header_len]))
    except Exception:
        raise AtRestError(f"{where}{AUTH_FAILED}") from None


def is_encrypted(blob_or_path: bytes | str | Path) -> bool:
    """True when the bytes (or the file's first bytes) start with the magic."""
    if isinstance(blob_or_path, (bytes, bytearray, memoryview)):
        return bytes(blob_or_path[: len(MAGIC)]) == MAGIC
    try:
        with open(blob_or_path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError as err:
        raise AtRestError(f"cannot read {blob_or_path}: {err.strerror}") from None


def write_encrypted(path: str | Path, plaintext: bytes, key_source: KeySource) -> None:
    """Encrypts first, then replaces `path` atomically (mode 0600): a failure leaves the old file."""
    blob, path = encrypt_bytes(plaintext, key_source), Path(path)
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


def _check_scrypt(log2_n: int, r: int, p: int, where: str = "") -> None:
    low, high = SCRYPT_LOG2_N_RANGE
    if not (low <= log2_n <= high and 1 <= r and 1 <= p <= SCRYPT_MAX_P and 128 * r * 2**log2_n <= SCRYPT_MAX_MEMORY):
        raise AtRestError(f"{where}scrypt parameters N=2^{log2_n}, r={r}, p={p} are outside the allowed bounds")


def _scrypt(passphrase: bytes, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=bytes(salt), length=KEY_LEN, n=2**log2_n, r=r, p=p).derive(passphrase)
