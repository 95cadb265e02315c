"""A client's side of secure aggregation (`secure-aggregation = true`; server/secure_rounds.py).

The train message carries the round's signed setup, checked first (client/secure_policy.py):
the node's own config must allow it, the group be large enough, the signature the server's. The
client trains as in a plain round (client/local_round.py), checks its delta (trained - global:
finite, and x * w / max-weight inside the clipping range, so nothing is clipped), keeps it in
`context.state` and answers with its stage-1 keys instead of the arrays. The stage messages
(train.secagg_*) then run one stage each of `shared.crypto.secagg.SecAggClient`, restored from
and saved to `context.state` (every message may run in a fresh process), each only after its
server signature checks out (shared/federation/secure_auth.py). Every reply's records are sealed
to the server key, the stage in the HPKE info. The delta never leaves the node unmasked; the
state is removed after the unmask stage. Anything wrong is an error reply: the server drops
this client.
"""

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

from client.secure_policy import min_clients
from client.server_key import server_key
from shared.crypto.sealing import SealContext
from shared.crypto.secagg.client import SecAggClient
from shared.crypto.secagg.params import SecAggError, SecAggParams
from shared.errors import LoraXSError
from shared.federation import secure_auth
from shared.federation.protocol import ARRAYS, CONFIG, METRICS
from shared.federation.sealed_update import SEALED
from shared.federation.secure_messages import MASKED, MASKED_Y, SECAGG, WEIGHT, delta_vector

STATE, DELTA = "loraxs.secagg", "loraxs.secagg-delta"  # context.state records


def keys_reply(
    msg: Message,
    context: Context,
    params: SecAggParams,
    trained: ArrayRecord,
    metrics: MetricRecord,
    fingerprint: str,
    setup_digest: bytes,
) -> RecordDict:
    """Stage 1, after local training: the checked delta is kept; the reply holds the sealed keys."""
    x = delta_vector(trained, msg.content[ARRAYS])  # (d,) trained - global
    weight = min(int(metrics["num-examples"]), params.max_weight)
    if not np.isfinite(x).all():
        raise SecAggError("the local delta is not finite; this client sits the round out")
    if np.abs(x).max() * weight / params.max_weight > params.clipping_range:
        raise SecAggError(
            "the local delta exceeds the secure-aggregation clipping range; this client sits the round out"
        )
    client = SecAggClient(params, context.node_id)
    stored = {"weight": weight, "fingerprint": fingerprint, "setup": setup_digest.hex()}
    sealed = _sealed(context, client, stored, secure_auth.KEYS, {SECAGG: ConfigRecord(client.keys())})
    context.state[DELTA] = ArrayRecord({"x": Array(x)})
    _save(context, client, stored)
    return RecordDict({METRICS: metrics, SEALED: sealed})


def share_keys(msg: Message, context: Context) -> Message:
    def work(client: SecAggClient, _) -> dict:
        return {SECAGG: ConfigRecord(client.share_keys(_record(msg)))}

    return _stage(msg, context, secure_auth.SHARE_KEYS, work)


def masked_input(msg: Message, context: Context) -> Message:
    def work(client: SecAggClient, stored: dict) -> dict:
        x = context.state[DELTA]["x"].numpy()  # (d,)
        weight = min(stored["weight"], int(msg.content[CONFIG][WEIGHT]))  # the server's bound, if lower
        y = client.masked_input(_record(msg), x, weight)  # (d + 1,) uint32
        return {MASKED: ArrayRecord({MASKED_Y: Array(y)})}

    return _stage(msg, context, secure_auth.MASKED, work, signed_extra=(WEIGHT,))


def unmask(msg: Message, context: Context) -> Message:
    def work(client: SecAggClient, _) -> dict:
        request = _record(msg)
        request = {k: [int(n) for n in request.get(k, [])] for k in ("survivors", "dropped")}
        if len(request["survivors"]) < min_clients(context):
            raise SecAggError(
                f"{len(request['survivors'])} survivors, below this node's minimum of "
                f"{min_clients(context)}: no share revealed"
            )
        return {SECAGG: ConfigRecord(client.reveal(request))}

    reply = _stage(msg, context, secure_auth.UNMASK, work)
    for name in (STATE, DELTA):  # the round is over for this client
        if name in context.state:
            del context.state[name]
    return reply


def _stage(msg: Message, context: Context, stage: str, work, signed_extra: tuple[str, ...] = ()) -> Message:
    """One stage on the stored client, once the server's signature checks out; the reply's
    records sealed to the server key. Any problem -> an error reply with one line."""
    try:
        client, stored = _load(context)
        params, config = client.params, msg.content[CONFIG]
        if int(config["server-round"]) != params.server_round or msg.metadata.run_id != params.run_id:
            raise SecAggError("the stage message belongs to another round")
        signed = {**_record(msg), **{k: config[k] for k in signed_extra}}
        recipient = context.node_id if stage == secure_auth.MASKED else 0
        secure_auth.check_statement(
            server_key(context),
            config.get(secure_auth.SIGNATURE),
            stage,
            params,
            stored["fingerprint"],
            bytes.fromhex(stored["setup"]),
            signed,
            recipient=recipient,
        )
        sealed = _sealed(context, client, stored, stage, work(client, stored))
        _save(context, client, stored)
        return Message(RecordDict({SEALED: sealed}), reply_to=msg)
    except Exception as err:
        reason = str(err) if isinstance(err, LoraXSError) else f"secure-aggregation stage failed ({type(err).__name__})"
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


def _sealed(context: Context, client: SecAggClient, stored: dict, stage: str, records: dict) -> ConfigRecord:
    key = server_key(context)
    if key is None:
        raise SecAggError("this node has no server key to seal its secure-aggregation replies to")
    seal_context = SealContext(
        client.params.run_id, client.params.server_round, context.node_id, stored["fingerprint"], stage
    )
    return secure_auth.seal_stage(records, key, seal_context)


def _record(msg: Message) -> dict:
    record = msg.content[SECAGG] if SECAGG in msg.content else None
    if not isinstance(record, ConfigRecord):
        raise SecAggError("the stage message carries no secure-aggregation record")
    return dict(record)


def _save(context: Context, client: SecAggClient, stored: dict) -> None:
    """The client state as JSON (node ids are uint64: too large for ConfigRecord integers)."""
    state = {k: {"hex": v.hex()} if isinstance(v, bytes) else v for k, v in client.to_state().items()}
    context.state[STATE] = ConfigRecord({"client": json.dumps({"client": state, **stored}).encode()})


def _load(context: Context) -> tuple[SecAggClient, dict]:
    if STATE not in context.state:
        raise SecAggError("no secure-aggregation round in progress on this node")
    stored = json.loads(context.state[STATE]["client"])
    state = {k: bytes.fromhex(v["hex"]) if isinstance(v, dict) else v for k, v in stored.pop("client").items()}
    return SecAggClient.from_state(state), stored
