"""`--fail-rate P`: a seeded share P of client messages fail, the way real devices do.

The draw is a pure function of (seed, round, partition, message type), so a run is repeatable.
A failing message, one of three kinds (equally likely):
  crash    the ClientApp raises: the server gets an error reply;
  timeout  the node goes silent: `SilencedGrid` (wrapped around the ServerApp's Grid) withholds
           its reply and returns the round's other replies only when the timeout
           (`round-timeout`) has passed, as a server waiting for a silent node experiences it.
           Nothing sleeps in a client, so a silent node never holds a Ray worker that honest
           clients queue behind (they did, and missed the deadline with it);
  garbage  the reply has the wrong record type for the adapter, or NaN in it / in its metrics.
Partition queries never fail (they happen once, before any round).
"""

import time
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ConfigRecord, Context, Message, MessageType
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from server.forwarding_grid import ForwardingGrid
from shared.federation.protocol import ARRAYS, CONFIG, METRICS, PARTITION_ID, STACKED_R, STATUS
from shared.federation.run_config import FederationConfig

FAIL_STREAM = 13
KINDS = ("crash", "timeout", "garbage")


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
    return app


class SilencedGrid(ForwardingGrid):
    """Withholds the replies of the nodes whose message draws "timeout"; when it withheld one, the
    others are returned only once `timeout` has passed since sending (the server waited for it).
    Nodes are known by partition from the replies to the partition query passing through."""

    def __init__(self, grid: Grid, config: FederationConfig):
        super().__init__(grid)
        self.config = config
        self.partitions: dict[int, int] = {}  # node id -> partition id

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        messages = list(messages)
        sent = time.monotonic()
        silent = {m.metadata.dst_node_id for m in messages if self._silent(m)}
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if reply.metadata.message_type == MessageType.QUERY and not reply.has_error():
                self.partitions[reply.metadata.src_node_id] = int(reply.content[STATUS][PARTITION_ID])
        heard = [r for r in replies if r.metadata.src_node_id not in silent]
        if len(heard) < len(replies) and timeout is not None:
            time.sleep(max(0.0, sent + timeout - time.monotonic()))
        return heard

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
