"""The ServerApp's Ed25519 signatures over what it tells the clients in secure aggregation.

    signing key = Ed25519(HKDF-SHA256(server HPKE private key, info = "loraxs-signing-key/v1"))
    signature   = Ed25519.sign(key, Statement.encode())

The signing key is derived from the HPKE private key, so an existing `server-key-file` keeps
working and gains a signing key; its public half is the second line of `server_key.pub`
(shared/crypto/sealing.py), which clients pin. A statement binds what was said (its stage and a
digest of its content) to the run, the round, the basis fingerprint, the round's setup (so the
participants) and, for a per-node message, its recipient: a signature of one message never
verifies for another stage, round, run, group or node.
"""

import hashlib
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.errors import LoraXSError

SIGNING_SUITE = "ed25519"
PUBLIC_LEN, SIGNATURE_LEN = 32, 64
KEY_INFO, STATEMENT_TAG = b"loraxs-signing-key/v1", b"loraxs-signed/v1"
U64 = 2**64


class SignatureError(LoraXSError):
    """A server statement that is unsigned, badly signed, or cannot be checked; one-line reason."""


def derive_signing_key(hpke_private_raw: bytes) -> ed25519.Ed25519PrivateKey:
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KEY_INFO).derive(hpke_private_raw)
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


def public_bytes(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def check_public_key(raw: object) -> bytes:
    """32 raw bytes of a usable Ed25519 public key, else SignatureError."""
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != PUBLIC_LEN:
        raise SignatureError(f"a server signing key must be {PUBLIC_LEN} bytes")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(bytes(raw))
    except Exception:
        raise SignatureError("the server signing key is not an Ed25519 key") from None
    return bytes(raw)


@dataclass(frozen=True)
class Statement:
    """What one signature covers. `recipient` 0: the same message goes to every participant."""

    stage: str
    run_id: int
    server_round: int
    fingerprint: str
    setup_digest: bytes
    content_digest: bytes
    recipient: int = 0

    def encode(self) -> bytes:
        fields = (self.stage.encode("ascii"), self.fingerprint.encode("ascii"), self.setup_digest, self.content_digest)
        numbers = struct.pack(">QQQ", self.run_id % U64, self.server_round % U64, self.recipient % U64)
        return STATEMENT_TAG + numbers + b"".join(struct.pack(">H", len(f)) + f for f in fields)


def sign(key: ed25519.Ed25519PrivateKey, statement: Statement) -> bytes:
    return key.sign(statement.encode())


def verify(public_raw: bytes | None, signature: object, statement: Statement) -> None:
    """Returns when `signature` is the server's over `statement`; SignatureError otherwise."""
    if public_raw is None:
        raise SignatureError("this node knows no server signing key: it cannot check the server's signature")
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != SIGNATURE_LEN:
        raise SignatureError(f"the {statement.stage} message is not signed by the server")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(bytes(public_raw)).verify(bytes(signature), statement.encode())
    except Exception:
        raise SignatureError(f"the {statement.stage} message carries a bad server signature") from None


def record_digest(record: Mapping) -> bytes:
    """sha256 of a canonical encoding of a flat record (str keys; bytes, str, int, float, bool or
    lists of them): equal records, in any key order, give equal digests."""
    digest = hashlib.sha256()
    for key in sorted(record):
        digest.update(_item(str(key)) + _item(record[key]))
    return digest.digest()


def _item(value) -> bytes:
    if isinstance(value, bool):
        return b"b" + bytes([value])
    if isinstance(value, int):
        return b"i" + _framed(str(value).encode("ascii"))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SignatureError("a signed record holds a non-finite number")
        return b"f" + struct.pack(">d", value)
    if isinstance(value, str):
        return b"s" + _framed(value.encode("utf-8"))
    if isinstance(value, (bytes, bytearray)):
        return b"y" + _framed(bytes(value))
    if isinstance(value, (list, tuple)):
        return b"l" + struct.pack(">I", len(value)) + b"".join(_item(v) for v in value)
    raise SignatureError(f"a signed record holds a {type(value).__name__}")


def _framed(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data
