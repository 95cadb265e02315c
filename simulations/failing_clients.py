"""`--fail-rate P`: a seeded share P of client messages fail, the way real devices do.

The draw is a pure function of (seed, round, partition, message type), so a run is repeatable.
A failing message, one of three kinds (equally likely):
  crash    the ClientApp raises: the server gets an error reply;
  timeout  the node goes silent: `SilencedGrid` (wrapped around the ServerApp's Grid) drops its
           reply, so the server aggregates exactly what a server that waited out `round-timeout`
           would: every honest reply that came in time, none from the silent node. The waiting
           itself is not spent (it would add `round-timeout` seconds of idle wall time to every
           round with a silent node), and nothing sleeps in a client, so a silent node never
           holds a Ray worker that honest clients queue behind (they did, and missed the deadline
           with it). Honest replies still face the real `round-timeout`;
  garbage  the reply has the wrong record type for the adapter, or NaN in it / in its metrics.
Partition queries never fail (they happen once, before any round), nor do secure aggregation's
stage 2-4 messages (their dropouts are SecAgg+'s own test: tests/test_secure_aggregation.py).
"""

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ConfigRecord, Context, Message, MessageType
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from server.forwarding_grid import ForwardingGrid
from shared.federation.protocol import ARRAYS, CONFIG, METRICS, PARTITION_ID, STACKED_R, STATUS
from shared.federation.run_config import FederationConfig
from shared.federation.secure_messages import MASKED_INPUT_ACTION, SHARE_KEYS_ACTION, UNMASK_ACTION

FAIL_STREAM = 13
KINDS = ("crash", "timeout", "garbage")
SECURE_STAGE_ACTIONS = (SHARE_KEYS_ACTION, MASKED_INPUT_ACTION, UNMASK_ACTION)


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
        reply = inner(msg, context)  # a "timeout" node's reply is withheld by SilencedGrid
        if kind == "garbage" and not reply.has_error():
            _spoil(reply, server_round + partition)
        return reply

    app.train()(answer)
    app.evaluate()(answer)
    app.query()(inner)
    for action in SECURE_STAGE_ACTIONS:  # secure aggregation's later stages: a node failed or silenced
        app.train(action)(inner)  # at stage 1 (the train message) is already out of the round
    return app


class SilencedGrid(ForwardingGrid):
    """Drops the replies of the nodes whose message draws "timeout" (the server never hears from
    them); the others come back as they arrive. Nodes are known by partition from the replies to
    the partition query passing through."""

    def __init__(self, grid: Grid, config: FederationConfig):
        super().__init__(grid)
        self.config = config
        self.partitions: dict[int, int] = {}  # node id -> partition id

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        messages = list(messages)
        silent = {m.metadata.dst_node_id for m in messages if self._silent(m)}
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if reply.metadata.message_type == MessageType.QUERY and not reply.has_error():
                self.partitions[reply.metadata.src_node_id] = int(reply.content[STATUS][PARTITION_ID])
        return [r for r in replies if r.metadata.src_node_id not in silent]

    def _silent(self, message: Message) -> bool:
        partition = self.partitions.get(message.metadata.dst_node_id)
        if partition is None or message.metadata.message_type not in (MessageType.TRAIN, MessageType.EVALUATE):
            return False
        server_round = int(message.content[CONFIG]["server-round"])
        return failure_kind(self.config, server_round, partition, message.metadata.message_type) == "timeout"


def _spoil(reply: Message, draw: int) -> None:
    content = reply.content
    if ARRAYS in content and draw % 2:
        content[ARRAYS] = ConfigRecord({key: 0.0 for key in content[ARRAYS].keys()})
    elif ARRAYS in content:
        stacked = content[ARRAYS][STACKED_R].numpy()
        content[ARRAYS][STACKED_R] = Array(np.full_like(stacked, np.nan))
    elif METRICS in content:
        content[METRICS]["accuracy-global"] = float("nan")
