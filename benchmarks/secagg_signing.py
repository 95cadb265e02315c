"""What authenticating secure aggregation costs per round: the server's Ed25519 signatures on its
four messages, the HPKE seal on each of a client's four stage replies, and the commitments to
shares (shared/federation/secure_auth.py, shared/crypto/secagg/verifiable_shares.py).

One real round of `SecAggClient` / `SecAggServer` (n clients, d values) is driven in-process; each
authenticating step is timed on its own (the sum over all clients and the server = seconds per
round), and every message is measured with and without it as Flower serializes it
(server/traffic.wire_bytes): the difference is the bytes it adds. Called by
benchmarks/security_overhead.py, which writes the result.
"""

import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from server.traffic import wire_bytes
from shared.crypto.sealing import SealContext, ServerPrivateKey
from shared.crypto.secagg.client import COMMITMENTS, SecAggClient
from shared.crypto.secagg.params import SecAggParams
from shared.crypto.secagg.server import SecAggServer
from shared.crypto.secagg.shares import BOX_LEN
from shared.crypto.signing import record_digest
from shared.federation import secure_auth
from shared.federation.secure_messages import MASKED, MASKED_Y, SECAGG, setup_config

FIRST_NODE, FINGERPRINT = 10_000, "ab" * 32


def signing_cost(clients: int, values: int, seed: int = 0) -> dict:
    """Seconds per round of each authenticating step, and bytes per client per round it adds."""
    key = ServerPrivateKey.generate()
    params = SecAggParams(
        participants=tuple(FIRST_NODE + 7919 * i for i in range(clients)),
        threshold=clients // 2 + 1,
        vector_length=values,
        max_weight=10_000,
        run_id=1,
        server_round=1,
    )
    rng = np.random.default_rng(seed)
    seconds = {"sign": 0.0, "verify": 0.0, "seal": 0.0, "open": 0.0, "commitments": 0.0}
    up = {"seal": 0, "commitments": 0}
    down = {"signature": 0, "commitments": 0}
    setup = setup_config(params)
    digest = record_digest(setup)

    def signed(stage: str, content: dict, recipient: int = 0) -> bytes:
        """The server signs; every addressee checks (timed), as the protocol does."""
        started = time.perf_counter()
        signature = secure_auth.sign_statement(key, stage, params, FINGERPRINT, digest, content, recipient=recipient)
        seconds["sign"] += time.perf_counter() - started
        started = time.perf_counter()
        for _ in params.participants if recipient == 0 else (recipient,):
            secure_auth.check_statement(
                key.public_key, signature, stage, params, FINGERPRINT, digest, content, recipient=recipient
            )
        seconds["verify"] += time.perf_counter() - started
        plain = ConfigRecord({"server-round": 1})
        with_signature = ConfigRecord({"server-round": 1, secure_auth.SIGNATURE: signature})
        down["signature"] += (wire_bytes(with_signature) - wire_bytes(plain)) * (
            len(params.participants) if recipient == 0 else 1
        )
        return signature

    def sealed(node: int, stage: str, records: dict) -> dict:
        """A client seals its reply, the server opens it (both timed); returns the records."""
        context = SealContext(1, 1, node, FINGERPRINT, stage)
        started = time.perf_counter()
        record = secure_auth.seal_stage(records, key.public_key, context)
        seconds["seal"] += time.perf_counter() - started
        reply = RecordDict({secure_auth.SEALED: record})
        up["seal"] += wire_bytes(reply) - wire_bytes(RecordDict(records))
        started = time.perf_counter()
        opened = secure_auth.open_stage(reply, key, context)
        seconds["open"] += time.perf_counter() - started
        return opened

    signed(secure_auth.SETUP, setup)
    server = SecAggServer(params)
    clients_ = {i: SecAggClient(params, i) for i in params.participants}
    for i, client in clients_.items():
        opened = sealed(i, secure_auth.KEYS, {SECAGG: ConfigRecord(client.keys())})
        server.receive_keys(i, dict(opened[SECAGG]))
    directory = server.directory()
    signed(secure_auth.SHARE_KEYS, directory)
    for i, client in clients_.items():
        reply = client.share_keys(dict(directory))  # boxes and commitments: the commitments timed below
        boxes_only = {k: v for k, v in reply.items() if k != COMMITMENTS}
        up["commitments"] += wire_bytes(ConfigRecord(reply)) - wire_bytes(ConfigRecord(boxes_only))
        opened = sealed(i, secure_auth.SHARE_KEYS, {SECAGG: ConfigRecord(reply)})
        server.receive_shares(i, {k: list(v) if k == COMMITMENTS else v for k, v in opened[SECAGG].items()})
    seconds["commitments"] += _commitment_seconds(params)
    inboxes = server.inboxes()
    for i, client in clients_.items():
        inbox = inboxes[i]
        down["commitments"] += wire_bytes(ConfigRecord(inbox)) - wire_bytes(
            ConfigRecord({k: v[:BOX_LEN] for k, v in inbox.items()})
        )
        signed(secure_auth.MASKED, {**inbox, "weight": 100}, recipient=i)
        y = client.masked_input(inbox, rng.normal(0, 0.01, values), 100)
        opened = sealed(i, secure_auth.MASKED, {MASKED: ArrayRecord({MASKED_Y: Array(y)})})
        server.receive_masked(i, opened[MASKED][MASKED_Y].numpy())
    request = server.unmask_request()
    wire_request = {k: [str(n) for n in v] for k, v in request.items()}
    signed(secure_auth.UNMASK, wire_request)
    for i in request["survivors"]:
        opened = sealed(i, secure_auth.UNMASK, {SECAGG: ConfigRecord(clients_[i].reveal(request))})
        server.receive_reveal(i, dict(opened[SECAGG]))
    _, _, summed = server.result()
    assert len(summed) == clients and not server.dropped, server.dropped  # the round went through
    n = len(params.participants)
    return {
        "clients": n,
        "values": values,
        "seconds_per_round": {k: round(v, 4) for k, v in seconds.items()} | {"total": round(sum(seconds.values()), 4)},
        "bytes_up_per_client_per_round": {k: round(v / n, 1) for k, v in up.items()}
        | {"total": round(sum(up.values()) / n, 1)},
        "bytes_down_per_client_per_round": {k: round(v / n, 1) for k, v in down.items()}
        | {"total": round(sum(down.values()) / n, 1)},
    }


def _commitment_seconds(params: SecAggParams) -> float:
    """The hashing the commitments add in one round: n x n made (stage 2), n x (n - 1) checked by
    the receivers (stage 3) and n x n checked by the server (stage 4, one half each)."""
    from shared.crypto.secagg.verifiable_shares import SEED, commit, matches

    context, share = params.context(), bytes(88)
    n = len(params.participants)
    started = time.perf_counter()
    made = [commit(context, 1, 2, share) for _ in range(n * n)]
    for _ in range(n * (n - 1)):
        commit(context, 1, 2, share)
    for c in made:
        matches(c, context, 1, 2, SEED, share[:36])
    return time.perf_counter() - started
