"""What a resumed run needs of the strategy (a checkpoint's "strategy" entry, JSON)."""

from dataclasses import asdict

from flwr.app import MetricRecord
from flwr.serverapp import Grid

from server.aggregators import aggregator_state, restore_aggregator
from server.round_stats import RoundStats


class CheckpointState:
    """`state()` for the checkpoint, `restore()` from it; uses `stats`, `evaluate_replies`,
    `partitions`, `delivery` and `aggregator`."""

    def state(self) -> dict:
        """What a resumed run needs (JSON): per-round stats and evaluations, which partitions hold
        the factors (node ids change between processes; partitions do not)."""
        return {
            "stats": {str(r): asdict(s) for r, s in self.stats.items()},
            "evaluate_replies": {str(r): [dict(m) for m in ms] for r, ms in self.evaluate_replies.items()},
            "partitions_with_basis": sorted(self.partitions[n] for n in self.delivery.holding if n in self.partitions),
            "partitions_shipped": sorted(self.partitions[n] for n in self.delivery.must_ship if n in self.partitions),
            "aggregator": aggregator_state(self.aggregator) if self.aggregator is not None else {},
        }

    def restore(self, state: dict, grid: Grid, factors_held: bool = True) -> None:
        """`factors_held`: trust that the partitions that held the factors still do (a node that
        lost them says so, and gets them again); False sends them to everyone once more.
        Partitions, not node ids, are what a checkpoint remembers: node ids change with the process."""
        self.stats = {int(r): RoundStats(**s) for r, s in state["stats"].items()}
        self.evaluate_replies = {int(r): [MetricRecord(m) for m in ms] for r, ms in state["evaluate_replies"].items()}
        self.discover_partitions(grid)
        # basis-delivery derive: every node is sent the recipe again (a few bytes): one that kept
        # the factors ignores it, one that lost them (a simulated node's state dies with its
        # process) derives them again instead of answering "unknown-fingerprint" and being
        # shipped the bundle. A node that could not derive them before is shipped them again.
        derive = self.delivery.recipe is not None
        holding = set(state["partitions_with_basis"]) if factors_held and not derive else set()
        self.delivery.holding = {n for n, p in self.partitions.items() if p in holding}
        shipped = set(state.get("partitions_shipped", []))
        self.delivery.must_ship = {n for n, p in self.partitions.items() if p in shipped}
        if self.aggregator is not None:
            restore_aggregator(self.aggregator, state.get("aggregator", {}))
