"""A client's side of secure aggregation (`secure-aggregation = true`; server/secure_rounds.py).

The train message carries the round's setup: the client trains as in a plain round
(client/local_round.py), checks its delta (trained - global: finite, and x * w / max-weight
inside the clipping range, so nothing is clipped), keeps it in `context.state` and answers with
its stage-1 keys instead of the arrays. The stage messages (train.secagg_*) then run one stage
each of `shared.crypto.secagg.SecAggClient`, restored from and saved to `context.state` (every
message may run in a fresh process). The delta never leaves the node unmasked; the state is
removed after the unmask stage. Anything wrong is an error reply: the server drops this client.
"""

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

from shared.crypto.secagg.client import SecAggClient
from shared.crypto.secagg.params import SecAggError, SecAggParams
from shared.federation.protocol import ARRAYS, CONFIG, METRICS
from shared.federation.secure_messages import MASKED, MASKED_Y, SECAGG, WEIGHT, delta_vector

STATE, DELTA = "loraxs.secagg", "loraxs.secagg-delta"  # context.state records


def keys_reply(msg: Message, context: Context, params: SecAggParams, trained: ArrayRecord,
               metrics: MetricRecord) -> RecordDict:
    """Stage 1, after local training: the checked delta is kept; the reply holds the keys."""
    x = delta_vector(trained, msg.content[ARRAYS])  # (d,) trained - global
    weight = min(int(metrics["num-examples"]), params.max_weight)
    if not np.isfinite(x).all():
        raise SecAggError("the local delta is not finite; this client sits the round out")
    if np.abs(x).max() * weight / params.max_weight > params.clipping_range:
        raise SecAggError("the local delta exceeds the secure-aggregation clipping range; "
                          "this client sits the round out")
    client = SecAggClient(params, context.node_id)
    keys = client.keys()
    context.state[DELTA] = ArrayRecord({"x": Array(x)})
    _save(context, client, weight)
    return RecordDict({METRICS: metrics, SECAGG: ConfigRecord(keys)})


def share_keys(msg: Message, context: Context) -> Message:
    return _stage(msg, context, lambda client, _: {SECAGG: ConfigRecord(client.share_keys(_record(msg)))})


def masked_input(msg: Message, context: Context) -> Message:
    def work(client: SecAggClient, weight: int) -> dict:
        x = context.state[DELTA]["x"].numpy()  # (d,)
        weight = min(weight, int(msg.content[CONFIG][WEIGHT]))  # the server's bound, if lower
        y = client.masked_input(_record(msg), x, weight)  # (d + 1,) uint32
        return {MASKED: ArrayRecord({MASKED_Y: Array(y)})}

    return _stage(msg, context, work)


def unmask(msg: Message, context: Context) -> Message:
    def work(client: SecAggClient, _) -> dict:
        request = _record(msg)
        request = {k: [int(n) for n in request.get(k, [])] for k in ("survivors", "dropped")}
        return {SECAGG: ConfigRecord(client.reveal(request))}

    reply = _stage(msg, context, work)
    for name in (STATE, DELTA):  # the round is over for this client
        if name in context.state:
            del context.state[name]
    return reply


def _stage(msg: Message, context: Context, work) -> Message:
    """One stage on the stored client; any problem -> an error reply with one line."""
    try:
        client, weight = _load(context)
        if int(msg.content[CONFIG]["server-round"]) != client.params.server_round:
            raise SecAggError("the stage message belongs to another round")
        content = RecordDict(work(client, weight))
        _save(context, client, weight)
        return Message(content, reply_to=msg)
    except Exception as err:
        reason = str(err) if isinstance(err, SecAggError) else f"secure-aggregation stage failed ({type(err).__name__})"
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


def _record(msg: Message) -> dict:
    record = msg.content[SECAGG]
    if not isinstance(record, ConfigRecord):
        raise SecAggError("the stage message carries no secure-aggregation record")
    return dict(record)


def _save(context: Context, client: SecAggClient, weight: int) -> None:
    """The client state as JSON (node ids are uint64: too large for ConfigRecord integers)."""
    state = {k: {"hex": v.hex()} if isinstance(v, bytes) else v for k, v in client.to_state().items()}
    context.state[STATE] = ConfigRecord({"client": json.dumps({"client": state, "weight": weight}).encode()})


def _load(context: Context) -> tuple[SecAggClient, int]:
    if STATE not in context.state:
        raise SecAggError("no secure-aggregation round in progress on this node")
    stored = json.loads(context.state[STATE]["client"])
    state = {k: bytes.fromhex(v["hex"]) if isinstance(v, dict) else v for k, v in stored["client"].items()}
    return SecAggClient.from_state(state), int(stored["weight"])
