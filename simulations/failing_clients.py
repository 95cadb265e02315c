"""`--fail-rate P`: a seeded share P of client messages fail, the way real devices do.

The draw is a pure function of (seed, round, partition, message type), so a run is repeatable.
A failing message, one of three kinds (equally likely):
  crash    the ClientApp raises: the server gets an error reply;
  timeout  the node answers only after the round's timeout (`round-timeout`): no reply arrives;
  garbage  the reply has the wrong record type for the adapter, or NaN in it / in its metrics.
Partition queries never fail (they happen once, before any round).
"""

import time

import numpy as np
from flwr.app import Array, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from shared.federation.protocol import ARRAYS, CONFIG, METRICS, STACKED_R
from shared.federation.run_config import FederationConfig

FAIL_STREAM = 13
KINDS = ("crash", "timeout", "garbage")
LATE_BY = 2.0  # seconds past the round timeout that a "timeout" node answers


def failure_kind(config: FederationConfig, server_round: int, partition: int, message_type: str) -> str | None:
    rng = np.random.default_rng([config.seed, server_round, partition, message_type == "train", FAIL_STREAM])
    if rng.random() >= config.fail_rate:
        return None
    return KINDS[int(rng.integers(len(KINDS)))]


def failing_client_app(inner: ClientApp, config: FederationConfig) -> ClientApp:
    app = ClientApp()

    def answer(msg: Message, context: Context) -> Message:
        server_round = int(msg.content[CONFIG]["server-round"])
        partition = int(context.node_config.get("partition-id", 0))
        kind = failure_kind(config, server_round, partition, msg.metadata.message_type)
        if kind == "crash":
            raise RuntimeError(f"simulated crash of partition {partition} in round {server_round}")
        reply = inner(msg, context)
        if kind == "timeout":
            time.sleep(config.round_timeout + LATE_BY)
        elif kind == "garbage" and not reply.has_error():
            _spoil(reply, server_round + partition)
        return reply

    app.train()(answer)
    app.evaluate()(answer)
    app.query()(inner)
    return app


def _spoil(reply: Message, draw: int) -> None:
    content = reply.content
    if ARRAYS in content and draw % 2:
        content[ARRAYS] = ConfigRecord({key: 0.0 for key in content[ARRAYS].keys()})
    elif ARRAYS in content:
        stacked = content[ARRAYS][STACKED_R].numpy()
        content[ARRAYS][STACKED_R] = Array(np.full_like(stacked, np.nan))
    elif METRICS in content:
        content[METRICS]["accuracy-global"] = float("nan")
