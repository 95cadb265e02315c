"""Updates sealed to the server with HPKE (RFC 9180, base mode), so relays store only ciphertext.

    sealed = HPKE.Seal(server public key, info = SealContext.encode(), payload)
           = enc (KEM output) || AEAD ciphertext || 16-byte tag

Suites (chosen by the server key, which both sides know; the sealed bytes carry no suite tag):
  "x25519"           DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM: 48 B overhead.
  "mlkem768-x25519"  the post-quantum hybrid ML-KEM-768 + X25519, HKDF-SHA256, AES-256-GCM (an AEAD
                     as strong as the KEM): 1136 B overhead.
The info binds run id, round, node id and basis fingerprint (and, for a secure-aggregation stage
reply, the stage): an update replayed from another round, another node, basis or stage does not
open. Replays within one round (same node, same round) are not detected here: the caller keeps
one update per node per round.
Key files are text, "<label> <suite> <hex of the raw key>"; private ones are 0600. A public key
file has a second line, "loraxs-signing-public-key ed25519 <hex>": the server's signing key
(shared/crypto/signing.py), derived from the private key; a file without it still loads.
"""

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from shared.artifacts.untrusted_file import read_untrusted_text
from shared.crypto.signing import SIGNING_SUITE, check_public_key, derive_signing_key, public_bytes
from shared.errors import LoraXSError

X25519, PQ_HYBRID = "x25519", "mlkem768-x25519"
SUITES = {
    X25519: hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM),
    PQ_HYBRID: hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
}
PUBLIC_LEN = {X25519: 32, PQ_HYBRID: 1184 + 32}  # PQ: ML-KEM-768 encapsulation key || X25519
PRIVATE_LEN = {X25519: 32, PQ_HYBRID: 64 + 32}  # PQ: ML-KEM-768 seed || X25519
OVERHEAD = {X25519: 32 + 16, PQ_HYBRID: 1120 + 16}  # KEM output + AEAD tag
PUBLIC_LABEL, PRIVATE_LABEL = "loraxs-hpke-public-key", "loraxs-hpke-private-key"
SIGNING_LABEL = "loraxs-signing-public-key"
CONTEXT_TAG, STAGE_CONTEXT_TAG = b"loraxs-seal/v1", b"loraxs-seal-stage/v1"
U64 = 2**64


MAX_KEY_FILE_BYTES = 64 * 2**10  # a label, a suite and the hex key (ML-KEM keys are a few KiB)


class SealError(LoraXSError):
    """A sealed update or a server key that cannot be used; the message says why in one line."""


@dataclass(frozen=True)
class SealContext:
    """What a sealed update is bound to; both sides must build the same one."""

    run_id: int
    server_round: int
    node_id: int
    basis_fingerprint: str
    stage: str = ""  # a secure-aggregation stage reply: its stage; "" for a train update

    def __post_init__(self):
        for name in ("run_id", "server_round", "node_id"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value < U64:
                raise SealError(f"seal context {name} must be an integer in [0, 2^64), got {value!r}")
        fingerprint = self.basis_fingerprint
        if not isinstance(fingerprint, str) or not fingerprint.isascii() or len(fingerprint) > 256:
            raise SealError("seal context basis_fingerprint must be an ASCII string of <= 256 chars")
        if not isinstance(self.stage, str) or not self.stage.isascii() or len(self.stage) > 64:
            raise SealError("seal context stage must be an ASCII string of <= 64 chars")

    def encode(self) -> bytes:
        """Canonical bytes: tag, three big-endian u64, u16 length + fingerprint ASCII (a stage
        reply: another tag, and u16 length + stage ASCII at the end)."""
        fingerprint = self.basis_fingerprint.encode("ascii")
        numbers = struct.pack(">QQQH", self.run_id, self.server_round, self.node_id, len(fingerprint))
        if not self.stage:
            return CONTEXT_TAG + numbers + fingerprint
        return (
            STAGE_CONTEXT_TAG + numbers + fingerprint + struct.pack(">H", len(self.stage)) + self.stage.encode("ascii")
        )


@dataclass(frozen=True)
class ServerPublicKey:
    suite: str
    raw: bytes
    signing: bytes | None = None  # the server's Ed25519 public key (32 B), when known

    @classmethod
    def from_bytes(cls, raw: object, signing: object = None) -> "ServerPublicKey":
        """Raw key bytes; the length says the suite (32 B: x25519, 1216 B: mlkem768-x25519).
        `signing`: the raw Ed25519 public key that comes with it, if any."""
        if not isinstance(raw, (bytes, bytearray)):
            raise SealError(f"a server public key must be bytes, got {type(raw).__name__}")
        suite = next((s for s, n in PUBLIC_LEN.items() if n == len(raw)), None)
        if suite is None:
            sizes = sorted(PUBLIC_LEN.values())
            raise SealError(f"a server public key has {len(raw)} bytes, expected one of {sizes}")
        if signing is not None:
            try:
                signing = check_public_key(signing)
            except LoraXSError as err:
                raise SealError(str(err)) from None
        key = cls(suite, bytes(raw), signing)
        key.hpke_key()  # rejects bytes that are not a valid key now, not at the first seal
        return key

    @property
    def fingerprint(self) -> str:
        """sha256 hex of the raw key: what an operator compares or pins."""
        return hashlib.sha256(self.raw).hexdigest()

    def hpke_key(self):
        try:
            if self.suite == X25519:
                return x25519.X25519PublicKey.from_public_bytes(self.raw)
            kem = mlkem.MLKEM768PublicKey.from_public_bytes(self.raw[:1184])
            return hpke.MLKEM768X25519PublicKey(kem, x25519.X25519PublicKey.from_public_bytes(self.raw[1184:]))
        except Exception as err:
            raise SealError(f"invalid {self.suite} server public key ({type(err).__name__})") from None


class ServerPrivateKey:
    """The ServerApp's HPKE private key (never printed: repr shows only the public fingerprint)."""

    def __init__(self, suite: str, raw: bytes):
        if suite not in SUITES or not isinstance(raw, bytes) or len(raw) != PRIVATE_LEN[suite]:
            raise SealError(f"a {suite} private key must be {PRIVATE_LEN.get(suite)} raw bytes")
        try:
            x_key = x25519.X25519PrivateKey.from_private_bytes(raw[-32:])
            if suite == X25519:
                self._key, public = x_key, x_key.public_key().public_bytes_raw()
            else:
                kem = mlkem.MLKEM768PrivateKey.from_seed_bytes(raw[:64])
                self._key = hpke.MLKEM768X25519PrivateKey(kem, x_key)
                public = kem.public_key().public_bytes_raw() + x_key.public_key().public_bytes_raw()
        except Exception as err:
            raise SealError(f"invalid {suite} private key ({type(err).__name__})") from None
        self.signing_key = derive_signing_key(raw)  # Ed25519, for secure aggregation's statements
        self.suite, self._raw = suite, raw
        self.public_key = ServerPublicKey(suite, public, public_bytes(self.signing_key))

    @classmethod
    def generate(cls, suite: str = X25519) -> "ServerPrivateKey":
        if suite not in SUITES:
            raise SealError(f"unknown HPKE suite {suite!r}; choose one of {sorted(SUITES)}")
        if suite == X25519:
            return cls(suite, x25519.X25519PrivateKey.generate().private_bytes_raw())
        return cls(suite, mlkem.MLKEM768PrivateKey.generate().private_bytes_raw() + os.urandom(32))

    def __repr__(self) -> str:
        return f"ServerPrivateKey({self.suite}, public {self.public_key.fingerprint[:16]})"


def seal_update(payload: bytes, server_public_key: ServerPublicKey, context: SealContext) -> bytes:
    """payload -> enc || ciphertext || tag, readable only by the holder of the private key."""
    if not isinstance(payload, (bytes, bytearray)):
        raise SealError(f"payload must be bytes, got {type(payload).__name__}")
    if not isinstance(server_public_key, ServerPublicKey) or not isinstance(context, SealContext):
        raise SealError("seal_update needs a ServerPublicKey and a SealContext")
    key = server_public_key.hpke_key()
    try:
        return SUITES[server_public_key.suite].encrypt(bytes(payload), key, info=context.encode())
    except Exception as err:
        raise SealError(f"sealing failed ({type(err).__name__})") from None


def open_update(sealed: object, server_private_key: ServerPrivateKey, expected_context: SealContext) -> bytes:
    """The payload, or SealError with a one-line reason; never any other exception."""
    if not isinstance(server_private_key, ServerPrivateKey) or not isinstance(expected_context, SealContext):
        raise SealError("open_update needs a ServerPrivateKey and a SealContext")
    if not isinstance(sealed, (bytes, bytearray, memoryview)):
        raise SealError(f"sealed update must be bytes, got {type(sealed).__name__}")
    overhead = OVERHEAD[server_private_key.suite]
    if len(sealed) < overhead:
        raise SealError(f"sealed update truncated: {len(sealed)} bytes, fewer than the {overhead}-byte overhead")
    try:
        suite, info = SUITES[server_private_key.suite], expected_context.encode()
        return suite.decrypt(bytes(sealed), server_private_key._key, info=info)
    except Exception:
        raise SealError(
            "sealed update does not open: tampered, sealed for another round/node/basis, or to another key"
        ) from None


def save_private_key(key: ServerPrivateKey, path: str | Path) -> None:
    """Writes the private key file with mode 0600; refuses to overwrite an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as err:
        raise SealError(f"cannot create private key file {path}: {err.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(f"{PRIVATE_LABEL} {key.suite} {key._raw.hex()}\n")


def save_public_key(key: ServerPublicKey, path: str | Path) -> None:
    """The file a client pins with --server-key (with the signing key's line when known)."""
    text = f"{PUBLIC_LABEL} {key.suite} {key.raw.hex()}\n"
    if key.signing is not None:
        text += f"{SIGNING_LABEL} {SIGNING_SUITE} {key.signing.hex()}\n"
    try:
        Path(path).write_text(text)
    except OSError as err:
        raise SealError(f"cannot write public key file {path}: {err.strerror}") from None


def load_private_key(path: str | Path) -> ServerPrivateKey:
    """Refuses a key file that group or others can read (like ssh does)."""
    try:
        if os.name == "posix" and os.stat(path).st_mode & 0o077:
            raise SealError(f"private key file {path} is readable by others: chmod 600 it")
    except OSError as err:
        raise SealError(f"cannot read private key file {path}: {err.strerror}") from None
    suite, raw, _ = _read_key_file(path, PRIVATE_LABEL)
    return ServerPrivateKey(suite, raw)


def load_public_key(path: str | Path) -> ServerPublicKey:
    """The HPKE public key, and the signing key when the file has its line (older files do not)."""
    suite, raw, signing = _read_key_file(path, PUBLIC_LABEL)
    key = ServerPublicKey.from_bytes(raw, signing)
    if key.suite != suite:
        raise SealError(f"{path}: key length does not match suite {suite}")
    return key


def _read_key_file(path: str | Path, label: str) -> tuple[str, bytes, bytes | None]:
    try:
        text = read_untrusted_text(path, "key file", MAX_KEY_FILE_BYTES, encoding="ascii")
    except LoraXSError as err:  # missing, a pipe or device, too long, not ASCII: one line, no blocking
        raise SealError(f"cannot read key file {path}: {str(err).removeprefix(f'key file {path} ')}") from None
    lines = [line.split() for line in text.splitlines() if line.strip()]
    first, rest = (lines[0], lines[1:]) if lines else ([], [])
    if len(first) != 3 or first[0] != label or first[1] not in SUITES:
        raise SealError(f"{path} is not a {label} file")
    signing_ok = label == PUBLIC_LABEL and len(rest) == 1 and rest[0][:2] == [SIGNING_LABEL, SIGNING_SUITE]
    if rest and (not signing_ok or len(rest[0]) != 3):
        raise SealError(f"{path} has an unexpected second line")
    try:
        return first[1], bytes.fromhex(first[2]), bytes.fromhex(rest[0][2]) if rest else None
    except ValueError:
        raise SealError(f"{path}: the key is not hex") from None
