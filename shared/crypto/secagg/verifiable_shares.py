"""Shares the server can check one by one, so that one bad share neither blocks a round nor hides
who sent it.

    commitment(owner i, receiver r) = SHA-256("seed" | round context | i | r | seed share)
                                   || SHA-256("key"  | round context | i | r | mask-key share)   64 B
The owner sends the n commitments (participant order, its own share's included) with its boxes
in stage 2. The server forwards to r the commitment of each box addressed to it (stage 3): r checks
the share it unboxed, and a share that does not match is the owner's fault (r names it). In stage
4 the server checks every revealed share against the owner's commitment: a share that does not
match is set aside and its revealer blamed, and a secret is rebuilt from any t good shares (one
combination, no search). Good shares that rebuild no valid secret blame the owner.
Hiding: each share is uniformly random given fewer than t others (Shamir), so its hash tells nothing.
"""

import hashlib
from collections.abc import Callable

from flwr.common.secure_aggregation.crypto.shamir import combine_shares

from shared.crypto.secagg.shares import SEED_SHARE_LEN

COMMIT_LEN = 64
TAG = b"loraxs-share-commit/v1"
SEED, KEY = b"seed", b"key"


def commit(context: bytes, owner: int, receiver: int, share: bytes) -> bytes:
    """The 64-byte commitment to an 88-byte share (seed share || mask-key share)."""
    return _digest(SEED, context, owner, receiver, share[:SEED_SHARE_LEN]) + _digest(
        KEY, context, owner, receiver, share[SEED_SHARE_LEN:]
    )


def matches(commitment: bytes, context: bytes, owner: int, receiver: int, part: bytes, share: bytes) -> bool:
    """Whether `share` (the seed part if `part` is SEED, else the mask-key part) is the one committed to."""
    half = commitment[:32] if part == SEED else commitment[32:]
    return len(commitment) == COMMIT_LEN and _digest(part, context, owner, receiver, share) == half


def rebuild(shares: list[bytes], threshold: int, check: Callable[[bytes], bool]) -> bytes | None:
    """The secret from the first `threshold` of `shares` (each already checked), or None when
    there are too few or the secret fails `check` (the owner handed out bad shares)."""
    if len(shares) < threshold:
        return None
    try:
        secret = combine_shares(list(shares[:threshold]))
    except Exception:
        return None
    return secret if check(secret) else None


def _digest(part: bytes, context: bytes, owner: int, receiver: int, share: bytes) -> bytes:
    ids = owner.to_bytes(8, "big") + receiver.to_bytes(8, "big")
    return hashlib.sha256(TAG + part + context + ids + share).digest()
