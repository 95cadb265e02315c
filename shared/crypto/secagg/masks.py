"""Masks from a cryptographic generator, and the keys both ends of a pair derive alike.

    self mask of i      = PRG(HKDF(b_i, info = "self" | round context))        b_i: 16 random bytes
    pairwise mask i, j  = PRG(HKDF(X25519(mask_sk_i, mask_pk_j), info = "pair" | context | lo | hi))
    share key i, j      = HKDF(X25519(enc_sk_i, enc_pk_j), info = "share" | context | lo | hi)
    PRG(key)            = ChaCha20(key, nonce 0) keystream read as little-endian uint64, mod 2^k
lo, hi: the two node ids in increasing order (u64 big-endian), so both ends derive the same key.
Client i adds the pairwise mask of (i, j) when i < j and subtracts it when i > j: they cancel.
"""

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEED_LEN, KEY_LEN = 16, 32


def expand_mask(key: bytes, length: int, modulus_bits: int) -> np.ndarray:
    """(length,) uint64 uniform in [0, 2^modulus_bits) from a 32-byte key."""
    stream = Cipher(algorithms.ChaCha20(key, b"\0" * 16), mode=None).encryptor().update(b"\0" * (8 * length))
    words = np.frombuffer(stream, dtype="<u8").astype(np.uint64)  # (length,)
    return words & np.uint64(2**modulus_bits - 1)


def self_mask_key(seed: bytes, context: bytes) -> bytes:
    return _hkdf(seed, b"self|" + context)


def pairwise_mask_key(mask_sk: x25519.X25519PrivateKey, peer_mask_pk: bytes, context: bytes, a: int, b: int) -> bytes:
    shared = mask_sk.exchange(x25519.X25519PublicKey.from_public_bytes(peer_mask_pk))
    return _hkdf(shared, b"pair|" + context + _pair(a, b))


def share_key(enc_sk: x25519.X25519PrivateKey, peer_enc_pk: bytes, context: bytes, a: int, b: int) -> bytes:
    shared = enc_sk.exchange(x25519.X25519PublicKey.from_public_bytes(peer_enc_pk))
    return _hkdf(shared, b"share|" + context + _pair(a, b))


def mask_sign(node: int, peer: int) -> int:
    """+1 when `node` adds the pair's mask, -1 when it subtracts it."""
    return 1 if node < peer else -1


def _pair(a: int, b: int) -> bytes:
    lo, hi = sorted((a, b))
    return lo.to_bytes(8, "big") + hi.to_bytes(8, "big")


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=None, info=info).derive(secret)
