"""The LoRA-XS layer around any Flower aggregator: the factors go once to each node, updates
are checked, then the aggregator (`strategy`: FedAvg, FedAvgM, FedAdam, ..., Krum, optionally
inside Flower's DP wrapper; server/aggregators.py) combines the good ones.

Built on `flwr.serverapp.strategy.FedAvg` for the round loop and the evaluation metrics; the
train aggregation is the aggregator's. Averaging the stacked r x r matrices and the head is exact
in delta W, since every client shares one basis: mean_k(s B R_k A) = s B mean_k(R_k) A. The
aggregator sees each round through `configure_train` (on a Grid holding only the sampled nodes:
its state, e.g. FedAdam's current arrays, and its settings, e.g. FedProx's proximal-mu or the
client-side clipping norm, ride in the train config) and only good fp32 replies in
`aggregate_train`. What this class adds:
  * per-node messages: the factors' recipe (basis-delivery derive: the node derives them) or
    bundle (ship) rides along only to nodes not known to hold them (server/basis_delivery.py);
  * a node answering "unknown-fingerprint" (cache lost, or derived factors that differ) gets the
    bundle, in the same round;
  * replies with wrong keys/shapes/dtype, NaN/Inf or another fingerprint are rejected with a
    logged reason, and the round goes on with the rest;
  * fp16 updates are widened to fp32 before averaging;
  * with `sealing` (encrypt-updates), the server key rides with the factors and each sealed
    update is opened first (server/sealed_updates.py); what does not open is a rejection;
  * any exception while checking one reply is that reply's rejection, never the server's end;
  * a client's "num-examples" (its weight) is clipped to what its partition holds (when the
    server knows) and to `max_client_examples`; non-integer, negative or non-finite is rejected,
    and so are evaluation metrics out of range (accuracy outside [0, 1], negative loss);
  * sampling is by partition id, seeded by (seed, round), so the same seed samples the same
    clients (Flower's FedAvg samples its random node ids); `discover_partitions` learns which
    node serves which partition once, with a query message;
  * rounds count from `round_offset + 1` (a resumed run; Flower's `start` always counts from 1);
  * a round with fewer than `min_train_nodes` good updates keeps the global adapter, logged;
  * with `secure` (secure-aggregation), the train step is secure aggregation of the deltas
    (server/secure_rounds.py): the setup rides in the train config, the replies are its keys;
  * one reply per node and round: a repeated reply from the same `src_node_id` is dropped
    (server/replies.py), whatever the Grid returns.
Replies are averaged in partition order, so the float sums do not depend on arrival order.
"""

import math
from collections.abc import Iterable
from logging import WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.supercore import log

from server.aggregators import dp_wrapper
from server.basis_delivery import BasisDelivery
from server.mixed_ranks import MixedRanks
from server.node_messages import NodeMessages
from server.partition_sampling import PartitionSampling, SampledGrid
from server.replies import one_reply_per_node
from server.reply_checks import ReplyChecks
from server.round_stats import RoundCounting, RoundStats
from server.strategy_state import CheckpointState
from shared.errors import LoraXSError
from shared.federation.protocol import ARRAYS, CONFIG, METRICS, cast_record, check_update


class LoraXSStrategy(NodeMessages, PartitionSampling, ReplyChecks, MixedRanks, RoundCounting, CheckpointState, FedAvg):
    """The round loop (Flower's FedAvg) with the LoRA-XS layer: messages (server/node_messages.py),
    sampling (server/partition_sampling.py), reply checks (server/reply_checks.py), per-entry mixed
    ranks (server/mixed_ranks.py), counts (server/round_stats.py), checkpoint state
    (server/strategy_state.py); the train aggregation is the aggregator's."""

    def __init__(
        self,
        basis_record: ArrayRecord,
        fingerprint: str,
        update_dtype: str,
        evaluate_metrics: tuple[str, ...],
        sealing=None,
        seed: int = 0,
        round_offset: int = 0,
        reply_timeout: float = 3600.0,
        max_client_examples: int = 10_000,
        partition_sizes: dict[int, int] | None = None,
        secure=None,
        recipe: dict | None = None,
        aggregator: Strategy | None = None,
        mixed_rank_aggregation: str = "zero-pad",
        **fedavg_args,
    ):
        super().__init__(**fedavg_args)
        self.mixed_rank_aggregation = mixed_rank_aggregation
        self.aggregator = aggregator  # None: FedAvg's own weighted mean
        self.seed = seed
        self.round_offset = round_offset
        self.reply_timeout = reply_timeout
        self.max_client_examples = max_client_examples
        self.partition_sizes = partition_sizes or {}  # partition -> train examples, when known
        self.partitions: dict[int, int] = {}  # node id -> partition id (discover_partitions)
        self.sealing = sealing  # server/sealed_updates.UpdateSealing, or None
        self.secure = secure  # server/secure_rounds.SecureRounds, or None
        self.delivery = BasisDelivery(basis_record, recipe)  # recipe None: the factors are shipped
        self.fingerprint = fingerprint
        self.update_dtype = update_dtype
        self.evaluate_metrics = evaluate_metrics
        self.stats: dict[int, RoundStats] = {}
        self.evaluate_replies: dict[int, list[MetricRecord]] = {}
        self._grid: Grid | None = None
        self._sent: dict[str, tuple[ArrayRecord, ConfigRecord]] = {}  # message type -> payload
        self._last_sent: dict[str, int] = {}  # message type -> nodes sent to, last time

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._grid = grid
        server_round += self.round_offset
        nodes = self.sample(grid, self.fraction_train, self.min_train_nodes, server_round, stream=0)
        config = ConfigRecord({**config, "server-round": server_round})
        if self.secure is not None:  # the train reply is the first stage of secure aggregation
            try:
                setup = self.secure.setup(nodes, server_round, arrays, self._run_id(), self.fingerprint)
            except LoraXSError as err:  # too few clients: the round is not started
                self._round(server_round).skipped = f"secure aggregation not started: {err}"
                log(WARNING, "round %s: skipped, the global adapter stays: %s", server_round, err)
                return []
            config = ConfigRecord({**config, **setup})
        config = self._aggregator_config(server_round, arrays, config, grid, nodes)
        return self._messages(nodes, arrays, config, MessageType.TRAIN)

    def _aggregator_config(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid, nodes: list[int]
    ) -> ConfigRecord:
        """The aggregator configures this round on the sampled nodes alone; what it adds to the
        train config (proximal-mu, clipping_norm) travels in ours."""
        if self.aggregator is None or not nodes:
            return config
        wrapper = dp_wrapper(self.aggregator)
        if wrapper is not None:
            wrapper.num_sampled_clients = len(nodes)
        messages = list(
            self.aggregator.configure_train(server_round, arrays, ConfigRecord(dict(config)), SampledGrid(grid, nodes))
        )
        return ConfigRecord({**config, **messages[0].content[CONFIG]}) if messages else config

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._grid = grid
        if self.fraction_evaluate == 0.0:
            return []
        server_round += self.round_offset
        nodes = self.sample(grid, self.fraction_evaluate, self.min_evaluate_nodes, server_round, stream=1)
        config = ConfigRecord({**config, "server-round": server_round})
        return self._messages(nodes, arrays, config, MessageType.EVALUATE)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        server_round += self.round_offset
        replies = one_reply_per_node(server_round, list(replies))
        replies = self._resend_to_unknown(server_round, replies, MessageType.TRAIN)
        self._count_failures(server_round, replies, MessageType.TRAIN)
        expected, _ = self._sent[MessageType.TRAIN]
        if self.secure is not None:  # server/secure_rounds.py: stages 2-4, then global + mean delta
            arrays, metrics = self.secure.aggregate(self, server_round, replies, expected)
            return self._stepped_from_mean(server_round, arrays, metrics)
        accepted = []
        for reply in replies:
            if reply.has_error():
                continue
            try:
                cleaned = self._opened(server_round, reply) or self._checked_update(server_round, reply, expected)
            except Exception as err:  # a checker never ends the run: anything odd is a rejection
                cleaned = f"its check failed ({type(err).__name__}: {str(err)[:80]})"
            if isinstance(cleaned, str):
                log(
                    WARNING,
                    "round %s: rejected the update of node %s: %s",
                    server_round,
                    reply.metadata.src_node_id,
                    cleaned,
                )
                self._round(server_round).rejected_updates += 1
                continue
            reply.content = cleaned  # only the checked arrays (as fp32) and metrics
            accepted.append(reply)
        accepted.sort(
            key=lambda r: (self.partitions.get(r.metadata.src_node_id, math.inf), r.metadata.src_node_id)
        )  # sums independent of arrival order
        stats = self._round(server_round)
        stats.clients_trained = len(accepted)
        stats.examples_trained = sum(int(r.content[METRICS]["num-examples"]) for r in accepted)
        if len(accepted) < max(1, self.min_train_nodes):
            stats.skipped = f"{len(accepted)} good update(s), fewer than min-train-nodes {self.min_train_nodes}"
            log(WARNING, "round %s: skipped, the global adapter stays: %s", server_round, stats.skipped)
            self._forget_round(server_round)
            return None, None
        if stats.ranks and self.mixed_rank_aggregation == "per-entry":
            return self._per_entry_round(server_round, accepted, stats.ranks)
        if self.aggregator is None:
            return super().aggregate_train(server_round, accepted)
        return self._aggregated(server_round, accepted)

    def _stepped_from_mean(self, server_round: int, arrays: ArrayRecord | None, metrics):
        """A mean computed here (secure aggregation's, per-entry's) as the round's result: as it is
        without an aggregator, else the mean-based aggregator's (FedAvgM, FedAdam, ...) step from
        it, handed over as its one reply."""
        if arrays is None or self.aggregator is None:
            return arrays, metrics
        mean = Message(
            RecordDict({ARRAYS: arrays, METRICS: MetricRecord({"num-examples": 1})}),
            dst_node_id=0,
            message_type=MessageType.TRAIN,
        )
        stepped, _ = self._aggregated(server_round, [mean])
        return stepped, metrics

    def _aggregated(self, server_round: int, accepted: list[Message]):
        """The aggregator's result on the good replies, or (None, None) with a logged reason:
        it raised, or gave something that is not finite fp32 arrays of the adapter's keys."""
        wrapper = dp_wrapper(self.aggregator)
        if wrapper is not None:  # DP-FedAvg: equal weights; the noise is calibrated to the n good ones
            wrapper.num_sampled_clients = len(accepted)
            for reply in accepted:
                reply.content[METRICS] = MetricRecord({**reply.content[METRICS], "num-examples": 1})
        stats = self._round(server_round)
        try:
            arrays, metrics = self.aggregator.aggregate_train(server_round, accepted)
            expected, _ = self._sent[MessageType.TRAIN]
            problem = (
                "it returned nothing"
                if arrays is None
                else check_update(cast_record(arrays, "fp32"), cast_record(expected, "fp32"))
            )
        except Exception as err:  # the aggregator's failure is this round's, not the run's
            arrays, metrics, problem = None, None, f"{type(err).__name__}: {str(err)[:120]}"
        if problem:
            stats.skipped = f"the aggregator gave no usable adapter ({problem})"
            log(WARNING, "round %s: skipped, the global adapter stays: %s", server_round, stats.skipped)
            return None, None
        return cast_record(arrays, "fp32"), metrics

    def _forget_round(self, server_round: int) -> None:
        """A skipped round releases nothing: drop the DP accountant's pending event for it."""
        wrapper = dp_wrapper(self.aggregator) if self.aggregator is not None else None
        if wrapper is not None:
            wrapper._pending_events.pop(server_round, None)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.round_offset
        replies = one_reply_per_node(server_round, list(replies))
        replies = self._resend_to_unknown(server_round, replies, MessageType.EVALUATE)
        self._count_failures(server_round, replies, MessageType.EVALUATE)
        accepted = [r for r in replies if not r.has_error() and self._checked_evaluation(server_round, r)]
        valid = [r.content[METRICS] for r in accepted if not r.has_error()]
        self.evaluate_replies[server_round] = valid
        return super().aggregate_evaluate(server_round, accepted)

    def evaluate_clients(
        self, grid: Grid, arrays: ArrayRecord, fraction: float, server_round: int
    ) -> list[MetricRecord]:
        """A last federated evaluation on `fraction` of the nodes: each client's metrics."""
        self._grid = grid
        if not self.partitions:
            self.discover_partitions(grid)
        num_nodes = len(self.partitions)
        sample_size = min(num_nodes, max(1, round(fraction * num_nodes)))
        node_ids = self.sample(grid, sample_size / num_nodes, 1, server_round, stream=2)
        config = ConfigRecord({"server-round": server_round, "final-evaluation": True})
        replies = one_reply_per_node(
            server_round,
            list(
                grid.send_and_receive(
                    self._messages(node_ids, arrays, config, MessageType.EVALUATE), timeout=self.reply_timeout
                )
            ),
        )
        replies = self._resend_to_unknown(server_round, replies, MessageType.EVALUATE)
        self._count_failures(server_round, replies, "final")
        return [r.content[METRICS] for r in replies if not r.has_error() and self._checked_evaluation(server_round, r)]
