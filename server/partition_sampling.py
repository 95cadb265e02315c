"""Sampling by partition id, seeded by (seed, round): the same seed samples the same clients
whatever node ids Flower draws. Which node serves which partition is asked once, with a query."""

import time
from logging import WARNING

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from server.forwarding_grid import ForwardingGrid
from shared.errors import LoraXSError
from shared.federation.protocol import CONFIG, PARTITION_ID, STATUS

SAMPLE_STREAM = 11  # the sampling draw's own random stream, apart from the data's
NODES_WAIT_SECONDS = 300.0  # how long to wait for the nodes a step needs before giving up


class PartitionSampling:
    """`partitions` (node id -> partition id) and the seeded draws; uses `seed`, `reply_timeout`
    and `min_available_nodes`."""

    def discover_partitions(self, grid: Grid) -> dict[int, int]:
        """Asks every node once which partition it serves (node config `partition-id`); a node
        without one (or silent) is ordered after the others by its node id."""
        nodes = self._wait_for_nodes(grid)
        query = [
            Message(
                RecordDict({CONFIG: ConfigRecord({"server-round": 0})}),
                message_type=MessageType.QUERY,
                dst_node_id=node,
            )
            for node in nodes
        ]
        found = {}
        for reply in grid.send_and_receive(query, timeout=self.reply_timeout):
            try:
                found[reply.metadata.src_node_id] = int(reply.content[STATUS][PARTITION_ID])
            except Exception:  # an error reply or a node without a partition id
                continue
        unknown = sorted(n for n in nodes if n not in found)
        start = max(found.values(), default=-1) + 1
        found.update({node: start + i for i, node in enumerate(unknown)})
        self.partitions = found
        return found

    def _wait_for_nodes(self, grid: Grid, needed: int | None = None) -> list[int]:
        """The connected nodes, once at least `needed` are (default `min_available_nodes`: the
        whole federation, before the partitions are discovered)."""
        needed = self.min_available_nodes if needed is None else needed
        deadline = time.monotonic() + NODES_WAIT_SECONDS
        while len(nodes := list(grid.get_node_ids())) < needed:
            if time.monotonic() > deadline:
                raise LoraXSError(f"only {len(nodes)} of {needed} nodes connected within {NODES_WAIT_SECONDS:.0f} s")
            time.sleep(1)
        return sorted(nodes)

    def sample(self, grid: Grid, fraction: float, minimum: int, server_round: int, stream: int) -> list[int]:
        """The nodes of a seeded draw of partitions: the same (seed, round) and the same connected
        nodes -> the same partitions. After discovery a round draws from the nodes connected now
        (waiting only for `minimum` of them): a node that left is not waited for."""
        if not self.partitions:
            self.discover_partitions(grid)
        connected = set(self._wait_for_nodes(grid, needed=max(1, minimum)))
        missing = sorted(set(self.partitions) - connected)
        if missing:
            log(
                WARNING,
                "round %s: %s known node(s) not connected, drawing from the %s connected",
                server_round,
                len(missing),
                len(connected),
            )
        by_partition = sorted((p, n) for n, p in self.partitions.items() if n in connected)
        size = min(len(by_partition), max(int(len(by_partition) * fraction), minimum))
        rng = np.random.default_rng([self.seed, server_round, SAMPLE_STREAM, stream])
        chosen = sorted(rng.choice(len(by_partition), size=size, replace=False)) if size else []
        return [by_partition[i][1] for i in chosen]


class SampledGrid(ForwardingGrid):
    """The Grid as the aggregator sees it in `configure_train`: only this round's sampled nodes."""

    def __init__(self, grid: Grid, nodes: list[int]):
        super().__init__(grid)
        self.nodes = list(nodes)

    def get_node_ids(self):
        return list(self.nodes)
