"""One client's side of a secure-aggregation round (stages 1-4 of `shared.crypto.secagg`).

Call the stages in order, each with the server's message, and send back what it returns. Between
stages the client is `to_state()` / `from_state()`: a flat dict of ints, bytes and int lists for
Flower's `context.state`, since every message runs in a fresh ClientApp process. Any bad server
message raises SecAggError (the caller replies with an error: the server counts it as dropped).
"""

import hashlib
import os
from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric import x25519

from shared.crypto.secagg import masks, shares
from shared.crypto.secagg.params import MIN_GROUP, SecAggError, SecAggParams, quantize
from shared.crypto.secagg.verifiable_shares import COMMIT_LEN, commit

KEYS, SHARE_KEYS, MASKED_INPUT, REVEAL, DONE = 1, 2, 3, 4, 5
PUBLIC_LEN = 32
COMMITMENTS = "commitments"  # stage-2 reply: one 64-byte commitment per participant, in order


def seed_hash(params: SecAggParams, node_id: int, seed: bytes) -> bytes:
    """Commitment to the self-mask seed: the server checks the seed it rebuilds against it."""
    return hashlib.sha256(params.context() + node_id.to_bytes(8, "big") + seed).digest()


class SecAggClient:
    def __init__(self, params: SecAggParams, node_id: int):
        if node_id not in params.participants:
            raise SecAggError(f"node {node_id} is not a participant of this secure-aggregation round")
        self.params, self.node_id, self.stage = params, node_id, KEYS
        self.enc_sk = x25519.X25519PrivateKey.generate()
        self.mask_sk = x25519.X25519PrivateKey.generate()
        self.seed = os.urandom(masks.SEED_LEN)  # 128-bit self-mask seed
        self.directory: dict[int, bytes] = {}  # node -> enc_pk || mask_pk, after stage 2
        self.received: dict[int, bytes] = {}  # node -> its 88-byte share for us (ours included)

    # Stage 1: public keys -------------------------------------------------------------------
    def keys(self) -> dict[str, bytes]:
        self._enter(KEYS)
        keys = self.public_keys()
        seed_commitment = seed_hash(self.params, self.node_id, self.seed)
        return {"enc-pk": keys[:PUBLIC_LEN], "mask-pk": keys[PUBLIC_LEN:], "seed-hash": seed_commitment}

    # Stage 2: boxed shares for every peer that sent keys, and a commitment to every share ---
    def share_keys(self, directory: Mapping[str, bytes]) -> dict[str, object]:
        self._enter(SHARE_KEYS)
        own = self.public_keys()
        self.directory = self._parse(directory, 2 * PUBLIC_LEN, "key directory")
        if self.directory.get(self.node_id) != own:
            raise SecAggError("the key directory does not hold this client's own keys")
        pos = {node: p for p, node in enumerate(self.params.participants)}
        secret_shares = shares.split_secrets(
            self.seed, self.mask_sk.private_bytes_raw(), self.params.threshold, len(pos)
        )
        self.received[self.node_id] = secret_shares[pos[self.node_id]]
        boxes = {}
        for peer, peer_keys in self.directory.items():
            if peer != self.node_id:
                key = self._pair_key(masks.share_key, self.enc_sk, peer_keys[:PUBLIC_LEN], peer)
                boxes[str(peer)] = shares.box(key, secret_shares[pos[peer]], self.node_id, peer)
        context = self.params.context()
        boxes[COMMITMENTS] = [commit(context, self.node_id, node, secret_shares[p]) for node, p in pos.items()]
        return boxes

    # Stage 3: the masked, quantized, weighted vector ---------------------------------------
    def masked_input(self, inbox: Mapping[str, bytes], vector: np.ndarray, weight: int) -> np.ndarray:
        """(d,) floats, example count -> (d + 1,) wire dtype; masks with every sender in `inbox`
        ({"<sender>": box || the sender's commitment to the share inside})."""
        self._enter(MASKED_INPUT)
        boxes = self._parse(inbox, shares.BOX_LEN + COMMIT_LEN, "share inbox")
        if self.node_id in boxes or not set(boxes) <= set(self.directory):
            raise SecAggError("the share inbox names nodes outside the key directory")
        own_index = self.params.participants.index(self.node_id) + 1
        for sender, boxed in boxes.items():
            key = self._pair_key(masks.share_key, self.enc_sk, self.directory[sender][:PUBLIC_LEN], sender)
            share = shares.unbox(key, boxed[: shares.BOX_LEN], sender, self.node_id)
            if boxed[shares.BOX_LEN :] != commit(self.params.context(), sender, self.node_id, share):
                raise SecAggError(f"the share from node {sender} does not match its commitment: node {sender} cheated")
            indices = {shares.share_index(share), shares.share_index(share[shares.SEED_SHARE_LEN :])}
            if indices != {own_index}:
                raise SecAggError(f"the share from node {sender} carries another participant's index")
            self.received[sender] = share
        if len(self.received) < self.params.threshold:
            raise SecAggError(
                f"only {len(self.received)} clients shared keys; the threshold is {self.params.threshold}"
            )
        p, d = self.params, self.params.vector_length
        y = quantize(vector, weight, p)  # (d + 1,) uint64, < 2^b
        y += masks.expand_mask(masks.self_mask_key(self.seed, p.context()), d + 1, p.modulus_bits)
        for peer in boxes:
            key = self._pair_key(masks.pairwise_mask_key, self.mask_sk, self.directory[peer][PUBLIC_LEN:], peer)
            mask = masks.expand_mask(key, d + 1, p.modulus_bits)  # (d + 1,) uint64
            y = y + mask if masks.mask_sign(self.node_id, peer) > 0 else y - mask  # wraps mod 2^64
        return (y & np.uint64(2**p.modulus_bits - 1)).astype(p.wire_dtype)  # (d + 1,) mod 2^k

    # Stage 4: shares the server needs to unmask the sum ------------------------------------
    def reveal(self, request: Mapping[str, object]) -> dict[str, bytes]:
        """Seed shares of survivors, mask-key shares of dropped nodes, never both for one node."""
        self._enter(REVEAL)
        try:
            survivors, dropped = set(request["survivors"]), set(request["dropped"])
        except Exception:
            raise SecAggError("malformed unmask request") from None
        if any(type(n) is not int for n in survivors | dropped):
            raise SecAggError("malformed unmask request")
        if survivors & dropped or self.node_id not in survivors:
            raise SecAggError("the unmask request asks for both secrets of a node, or drops this client")
        if not survivors | dropped <= set(self.received) or len(survivors) < max(self.params.threshold, MIN_GROUP):
            raise SecAggError("the unmask request names unknown nodes or too few survivors")
        cut = shares.SEED_SHARE_LEN
        out = {str(n): self.received[n][:cut] for n in survivors}
        out.update({str(n): self.received[n][cut:] for n in dropped})
        return out

    # State between stages (Flower context.state) -------------------------------------------
    def to_state(self) -> dict:
        state = {f"param.{k}": v for k, v in self.params.to_config().items()}
        state.update({"node-id": self.node_id, "stage": self.stage, "seed": self.seed})
        state.update({"enc-sk": self.enc_sk.private_bytes_raw(), "mask-sk": self.mask_sk.private_bytes_raw()})
        state.update({f"dir.{n}": v for n, v in self.directory.items()})
        state.update({f"share.{n}": v for n, v in self.received.items()})
        return state

    @classmethod
    def from_state(cls, state: Mapping) -> "SecAggClient":
        try:
            params = SecAggParams.from_config({k[6:]: v for k, v in state.items() if k.startswith("param.")})
            client = cls(params, state["node-id"])
            client.stage, client.seed = int(state["stage"]), bytes(state["seed"])
            client.enc_sk = x25519.X25519PrivateKey.from_private_bytes(state["enc-sk"])
            client.mask_sk = x25519.X25519PrivateKey.from_private_bytes(state["mask-sk"])
            client.directory = {int(k[4:]): bytes(v) for k, v in state.items() if k.startswith("dir.")}
            client.received = {int(k[6:]): bytes(v) for k, v in state.items() if k.startswith("share.")}
        except SecAggError:
            raise
        except Exception as err:
            raise SecAggError(f"corrupt secure-aggregation client state ({type(err).__name__})") from None
        return client

    def public_keys(self) -> bytes:
        """enc_pk || mask_pk (64 B), as the key directory lists them."""
        return self.enc_sk.public_key().public_bytes_raw() + self.mask_sk.public_key().public_bytes_raw()

    def _enter(self, stage: int) -> None:
        if self.stage != stage:
            raise SecAggError(f"secure-aggregation stage {stage} requested, but this client is at stage {self.stage}")
        self.stage = stage + 1

    def _parse(self, message: Mapping, value_len: int, what: str) -> dict[int, bytes]:
        """{"<node id>": bytes of value_len} with participant ids -> {node id: bytes}."""
        try:
            parsed = {int(k): bytes(v) for k, v in message.items() if isinstance(v, (bytes, bytearray))}
        except Exception:
            parsed = {}
        lengths_ok = all(len(v) == value_len for v in parsed.values())
        known = set(parsed) <= set(self.params.participants)
        if not parsed or len(parsed) != len(message) or not lengths_ok or not known:
            raise SecAggError(f"malformed {what} from the server")
        return parsed

    def _pair_key(self, derive, own_sk, peer_pk: bytes, peer: int) -> bytes:
        try:
            return derive(own_sk, peer_pk, self.params.context(), self.node_id, peer)
        except Exception:
            raise SecAggError(f"node {peer}'s public key is unusable") from None
