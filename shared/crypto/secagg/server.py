"""The server's side of a secure-aggregation round: it routes boxes, sums masked vectors and
rebuilds only the masks, so it learns sum(w' x) and sum(w') and never one client's vector.

Every `receive_*` checks a client's reply and never raises: anything malformed, late or out of
order drops that client (`dropped[node] = reason`, logged). The stage closers (`directory`,
`inboxes`, `unmask_request`, `result`) raise SecAggError when fewer than `threshold` (and
never fewer than MIN_GROUP) clients are left. `drop(node, reason)` is for timeouts and error
replies. A revealed share that is not the one its owner committed to is set aside and its
revealer blamed (`blamed[node] = reason`); secrets are rebuilt from the good shares.
"""

import logging
from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric import x25519

from shared.crypto.secagg import masks, shares
from shared.crypto.secagg.client import COMMITMENTS, PUBLIC_LEN, seed_hash
from shared.crypto.secagg.params import MIN_GROUP, SecAggError, SecAggParams, dequantize
from shared.crypto.secagg.verifiable_shares import COMMIT_LEN, KEY, SEED, matches, rebuild

log = logging.getLogger(__name__)
KEYS, SHARE_KEYS, MASKED_INPUT, REVEAL, DONE = 1, 2, 3, 4, 5


class SecAggServer:
    def __init__(self, params: SecAggParams):
        self.params, self.stage = params, KEYS
        self.dropped: dict[int, str] = {}
        self.blamed: dict[int, str] = {}  # node -> what it did wrong (bad shares)
        self.commitments: dict[int, list[bytes]] = {}  # U2: owner -> one per participant, in order
        self.keys: dict[int, bytes] = {}  # U1: node -> enc_pk || mask_pk
        self.seed_hashes: dict[int, bytes] = {}
        self.boxes: dict[int, dict[str, bytes]] = {}  # U2: sender -> {"<receiver>": box}
        self.masked: dict[int, np.ndarray] = {}  # U3: node -> (d + 1,) uint64, masked
        self.revealed: dict[int, dict[int, bytes]] = {}  # revealer -> {node: share}
        self.survivors: tuple[int, ...] = ()
        self.gone: tuple[int, ...] = ()  # in U2 but not U3: their mask keys get rebuilt

    def drop(self, node: int, reason: str) -> None:
        if node in self.params.participants and node not in self.dropped:
            self.dropped[node] = reason
            log.warning("secure aggregation, round %s: node %s dropped: %s", self.params.server_round, node, reason)

    # Stage 1 -------------------------------------------------------------------------------
    def receive_keys(self, node: int, reply: object) -> bool:
        def check():
            enc_pk, mask_pk, commit = (_exact_bytes(reply, k, 32) for k in ("enc-pk", "mask-pk", "seed-hash"))
            for pk in (enc_pk, mask_pk):  # rejects keys X25519 cannot parse
                x25519.X25519PublicKey.from_public_bytes(pk)
            self.keys[node], self.seed_hashes[node] = enc_pk + mask_pk, commit

        return self._receive(KEYS, node, check)

    def directory(self) -> dict[str, bytes]:
        """Closes stage 1: {"<node>": enc_pk || mask_pk} for every client that sent keys."""
        self._close(KEYS, self.keys, "sent public keys")
        return {str(n): k for n, k in self.keys.items()}

    # Stage 2 -------------------------------------------------------------------------------
    def receive_shares(self, node: int, reply: object) -> bool:
        def check():
            peers = {str(n) for n in self.keys if n != node}
            if not isinstance(reply, Mapping) or set(reply) != peers | {COMMITMENTS}:
                raise ValueError("share boxes must address exactly every other client in the directory")
            commitments = reply[COMMITMENTS]
            n = len(self.params.participants)
            if (
                not isinstance(commitments, list)
                or len(commitments) != n
                or not all(isinstance(c, bytes) and len(c) == COMMIT_LEN for c in commitments)
            ):
                raise ValueError(f"the share commitments must be {n} values of {COMMIT_LEN} bytes")
            self.boxes[node] = {k: _exact_bytes(reply, k, shares.BOX_LEN) for k in peers}
            self.commitments[node] = list(commitments)

        return self._receive(SHARE_KEYS, node, check)

    def inboxes(self) -> dict[int, dict[str, bytes]]:
        """Closes stage 2: for each client that shared, the boxes addressed to it by the others,
        each followed by its sender's commitment to the share inside."""
        self._close(SHARE_KEYS, self.boxes, "shared their secrets")
        pos = {n: p for p, n in enumerate(self.params.participants)}
        return {
            r: {str(s): b[str(r)] + self.commitments[s][pos[r]] for s, b in self.boxes.items() if s != r}
            for r in self.boxes
        }

    # Stage 3 -------------------------------------------------------------------------------
    def receive_masked(self, node: int, reply: object) -> bool:
        def check():
            p = self.params
            shape = (p.vector_length + 1,)
            if not isinstance(reply, np.ndarray) or reply.dtype != p.wire_dtype or reply.shape != shape:
                raise ValueError(f"the masked vector must be ({p.vector_length + 1},) {np.dtype(p.wire_dtype).name}")
            if int(reply.max()) >= 2**p.modulus_bits:
                raise ValueError("masked values exceed the modulus")
            self.masked[node] = reply.astype(np.uint64)  # (d + 1,)

        return self._receive(MASKED_INPUT, node, check)

    def unmask_request(self) -> dict[str, list[int]]:
        """Closes stage 3: survivors (send seed shares of these) and dropped (mask-key shares)."""
        self._close(MASKED_INPUT, self.masked, "sent a masked vector")
        self.survivors = tuple(sorted(self.masked))
        self.gone = tuple(sorted(set(self.boxes) - set(self.masked)))
        return {"survivors": list(self.survivors), "dropped": list(self.gone)}

    # Stage 4 -------------------------------------------------------------------------------
    def receive_reveal(self, node: int, reply: object) -> bool:
        def check():
            if node not in self.survivors:
                raise ValueError("not a survivor")
            if not isinstance(reply, Mapping) or set(reply) != {str(n) for n in self.survivors + self.gone}:
                raise ValueError("the reveal must hold one share per survivor and dropped node")
            position = self.params.participants.index(node)
            revealed, context = {}, self.params.context()
            for n in self.survivors + self.gone:
                part, size = (SEED, shares.SEED_SHARE_LEN) if n in self.survivors else (KEY, shares.KEY_SHARE_LEN)
                revealed[n] = _exact_bytes(reply, str(n), size)
                if shares.share_index(revealed[n]) != position + 1:
                    raise ValueError(f"share for node {n} carries another index")
                if not matches(self.commitments[n][position], context, n, node, part, revealed[n]):
                    self.blamed[node] = f"revealed a share of node {n} that node {n} never committed to"
                    raise ValueError(self.blamed[node])
            self.revealed[node] = revealed

        return self._receive(REVEAL, node, check)

    def result(self) -> tuple[np.ndarray, int, tuple[int, ...]]:
        """Closes stage 4: (sum of w' x (d,) float64, sum of w', the clients summed)."""
        self._close(REVEAL, self.revealed, "revealed shares")
        p, length, t = self.params, self.params.vector_length + 1, self.params.threshold
        total = np.zeros(length, dtype=np.uint64)  # (d + 1,), all sums wrap mod 2^64
        for node in self.survivors:
            total += self.masked[node]
            seed = self._rebuild(node, lambda s, n=node: seed_hash(p, n, s) == self.seed_hashes[n])
            total -= masks.expand_mask(masks.self_mask_key(seed, p.context()), length, p.modulus_bits)
        for gone in self.gone:
            mask_pk = self.keys[gone][PUBLIC_LEN:]
            raw = self._rebuild(gone, lambda s, pk=mask_pk: _is_private_key_of(s, pk))
            gone_sk = x25519.X25519PrivateKey.from_private_bytes(raw)
            for node in self.survivors:  # node added sign(node, gone) * mask(node, gone)
                key = masks.pairwise_mask_key(gone_sk, self.keys[node][PUBLIC_LEN:], p.context(), node, gone)
                mask = masks.expand_mask(key, length, p.modulus_bits)  # (d + 1,)
                total = total - mask if masks.mask_sign(node, gone) > 0 else total + mask
        total &= np.uint64(2**p.modulus_bits - 1)  # (d + 1,) = sum of quantized encodings
        weighted_sum, total_weight = dequantize(total, len(self.survivors), p)
        log.info("secure aggregation, round %s: summed %d clients (t=%d)", p.server_round, len(self.survivors), t)
        return weighted_sum, total_weight, self.survivors

    # ---------------------------------------------------------------------------------------
    def _rebuild(self, node: int, check) -> bytes:
        """From t revealed shares, each checked against `node`'s commitment on arrival."""
        secret = rebuild([r[node] for _, r in sorted(self.revealed.items())], self.params.threshold, check)
        if secret is None:
            self.blamed[node] = "its committed shares do not rebuild its secret"
            raise SecAggError(f"the shares node {node} handed out do not rebuild its secret: node {node} cheated")
        return secret

    def _receive(self, stage: int, node: int, check) -> bool:
        if node in self.dropped:
            return False
        expected = {
            KEYS: self.params.participants,
            SHARE_KEYS: self.keys,
            MASKED_INPUT: self.boxes,
            REVEAL: self.survivors,
        }[stage]
        if self.stage != stage or node not in expected or node in self._replies(stage):
            self.drop(node, f"stage-{stage} reply out of turn or repeated (server at stage {self.stage})")
            return False
        try:
            check()
            return True
        except Exception as err:
            self.drop(node, f"malformed stage-{stage} reply: {str(err)[:120] or type(err).__name__}")
            return False

    def _replies(self, stage: int) -> dict:
        return {KEYS: self.keys, SHARE_KEYS: self.boxes, MASKED_INPUT: self.masked, REVEAL: self.revealed}[stage]

    def _close(self, stage: int, got: dict, what: str) -> None:
        if self.stage != stage:
            raise SecAggError(f"secure-aggregation stage {stage} closed out of order (at {self.stage})")
        for node in list(got):
            if node in self.dropped:
                del got[node]
        needed = max(self.params.threshold, MIN_GROUP)
        if len(got) < needed:
            raise SecAggError(
                f"only {len(got)} of {len(self.params.participants)} clients {what}; "
                f"secure aggregation needs at least {needed}"
            )
        self.stage = stage + 1


def _exact_bytes(reply: object, key: str, size: int) -> bytes:
    value = reply.get(key) if isinstance(reply, Mapping) else None
    if not isinstance(value, (bytes, bytearray)) or len(value) != size:
        raise ValueError(f"{key!r} must be {size} bytes")
    return bytes(value)


def _is_private_key_of(raw: bytes, public: bytes) -> bool:
    try:
        return x25519.X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw() == public
    except Exception:
        return False
