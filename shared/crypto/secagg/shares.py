"""Shamir shares of a client's two secrets, boxed for each peer, and their reconstruction.

Each client splits its self-mask seed b (16 B) and its mask private key (32 B) with Flower's
`create_shares` (pycryptodome Shamir over GF(2^128), t-of-n; share = u32 LE index || 16 B per
padded chunk): 36 B + 52 B. The share with index p + 1 belongs to the participant at position p.
Boxes travel through the server: ChaCha20-Poly1305 under the pair's share key, random nonce,
associated data = sender id || receiver id, so the server can neither read nor re-address them.
Rebuilding a secret from revealed shares: shared/crypto/secagg/verifiable_shares.py.
"""

import os

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from flwr.common.secure_aggregation.crypto.shamir import create_shares

from shared.crypto.secagg.params import SecAggError

SEED_SHARE_LEN, KEY_SHARE_LEN = 4 + 32, 4 + 48
NONCE_LEN, TAG_LEN = 12, 16
BOX_LEN = NONCE_LEN + SEED_SHARE_LEN + KEY_SHARE_LEN + TAG_LEN  # 116 B per peer


def split_secrets(seed: bytes, mask_sk: bytes, threshold: int, num: int) -> list[bytes]:
    """num shares (position order), each seed share || mask-key share (88 B)."""
    seed_shares, key_shares = create_shares(seed, threshold, num), create_shares(mask_sk, threshold, num)
    return [s + k for s, k in zip(seed_shares, key_shares)]


def share_index(share: bytes) -> int:
    return int.from_bytes(share[:4], "little")


def box(key: bytes, share: bytes, sender: int, receiver: int) -> bytes:
    nonce = os.urandom(NONCE_LEN)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, share, _ids(sender, receiver))


def unbox(key: bytes, boxed: bytes, sender: int, receiver: int) -> bytes:
    """The 88-byte share, or SecAggError (tampered, re-addressed or not for this key)."""
    try:
        share = ChaCha20Poly1305(key).decrypt(boxed[:NONCE_LEN], boxed[NONCE_LEN:], _ids(sender, receiver))
    except Exception:
        raise SecAggError(f"the share box from node {sender} does not open") from None
    if len(share) != SEED_SHARE_LEN + KEY_SHARE_LEN:
        raise SecAggError(f"the share from node {sender} has {len(share)} bytes")
    return share


def _ids(sender: int, receiver: int) -> bytes:
    return sender.to_bytes(8, "big") + receiver.to_bytes(8, "big")
