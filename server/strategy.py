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
    (server/secure_rounds.py): the setup rides in the train config, the replies are its keys.
Replies are averaged in partition order, so the float sums do not depend on arrival order.
"""

from collections.abc import Iterable
import math
import time
from dataclasses import asdict, dataclass, field
from logging import WARNING

import numpy as np

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.supercore import log
from flwr.supercore.task_identity import TaskIdentity

from server.aggregators import aggregator_state, dp_wrapper, restore_aggregator
from server.forwarding_grid import ForwardingGrid
from server.basis_delivery import BasisDelivery
from shared.federation.sealed_update import SERVER_KEY
from shared.federation.protocol import (
    ARRAYS, CONFIG, METRICS, PARTITION_ID, STACKED_R, STATUS, TRAIN_METRICS, UNKNOWN_FINGERPRINT,
    cast_record, check_update, clean_metrics, top_left_adapter,
)
from shared.loraxs.mixed_rank import per_entry_from_zero_padded, zero_pad
from shared.errors import LoraXSError

SAMPLE_STREAM = 11  # the sampling draw's own random stream, apart from the data's
NODES_WAIT_SECONDS = 300.0  # how long to wait for the nodes a step needs before giving up


@dataclass
class RoundStats:
    clients_trained: int = 0
    examples_trained: int = 0  # the accepted updates' (bounded) num-examples
    ranks: dict[int, int] = field(default_factory=dict)  # node -> its smaller rank (mixed ranks)
    update_norms: list[float] = field(default_factory=list)  # L2 of each good update's delta (fp32)
    rejected_updates: int = 0
    bases_resent: int = 0
    clipped_weights: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # "<phase>-error|timeout" -> count
    skipped: str = ""  # why the round kept the global adapter ("" = it did not)


class LoraXSStrategy(FedAvg):
    def __init__(self, basis_record: ArrayRecord, fingerprint: str, update_dtype: str,
                 evaluate_metrics: tuple[str, ...], sealing=None, seed: int = 0,
                 round_offset: int = 0, reply_timeout: float = 3600.0,
                 max_client_examples: int = 10_000, partition_sizes: dict[int, int] | None = None,
                 secure=None, recipe: dict | None = None, aggregator: Strategy | None = None,
                 mixed_rank_aggregation: str = "zero-pad", **fedavg_args):
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

    # --- messages -------------------------------------------------------------------------
    def _messages(self, node_ids: Iterable[int], arrays: ArrayRecord, config: ConfigRecord,
                  message_type: str) -> list[Message]:
        wire = cast_record(arrays, self.update_dtype)
        config = ConfigRecord({**config, "fingerprint": self.fingerprint})
        self._sent[message_type] = (wire, config)
        node_ids = list(node_ids)
        self._last_sent[message_type] = len(node_ids)
        return [self._message(node, wire, config, message_type) for node in node_ids]

    def _message(self, node_id: int, wire: ArrayRecord, config: ConfigRecord, message_type: str) -> Message:
        content = RecordDict({ARRAYS: wire, CONFIG: config})
        if self.delivery.attach(node_id, content) and self.sealing is not None:
            content[CONFIG] = ConfigRecord({**content[CONFIG], SERVER_KEY: self.sealing.public_key})
        return Message(content=content, message_type=message_type, dst_node_id=node_id)

    # --- sampling by partition -------------------------------------------------------------
    def discover_partitions(self, grid: Grid) -> dict[int, int]:
        """Asks every node once which partition it serves (node config `partition-id`); a node
        without one (or silent) is ordered after the others by its node id."""
        nodes = self._wait_for_nodes(grid)
        query = [Message(RecordDict({CONFIG: ConfigRecord({"server-round": 0})}),
                         message_type=MessageType.QUERY, dst_node_id=node) for node in nodes]
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
                raise LoraXSError(f"only {len(nodes)} of {needed} nodes connected "
                                  f"within {NODES_WAIT_SECONDS:.0f} s")
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
            log(WARNING, "round %s: %s known node(s) not connected, drawing from the %s connected",
                server_round, len(missing), len(connected))
        by_partition = sorted((p, n) for n, p in self.partitions.items() if n in connected)
        size = min(len(by_partition), max(int(len(by_partition) * fraction), minimum))
        rng = np.random.default_rng([self.seed, server_round, SAMPLE_STREAM, stream])
        chosen = sorted(rng.choice(len(by_partition), size=size, replace=False)) if size else []
        return [by_partition[i][1] for i in chosen]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._grid = grid
        server_round += self.round_offset
        nodes = self.sample(grid, self.fraction_train, self.min_train_nodes, server_round, stream=0)
        config = ConfigRecord({**config, "server-round": server_round})
        if self.secure is not None:  # the train reply is the first stage of secure aggregation
            config = ConfigRecord({**config, **self.secure.setup(nodes, server_round, arrays, self._run_id())})
        config = self._aggregator_config(server_round, arrays, config, grid, nodes)
        return self._messages(nodes, arrays, config, MessageType.TRAIN)

    def _aggregator_config(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid, nodes: list[int]) -> ConfigRecord:
        """The aggregator configures this round on the sampled nodes alone; what it adds to the
        train config (proximal-mu, clipping_norm) travels in ours."""
        if self.aggregator is None or not nodes:
            return config
        wrapper = dp_wrapper(self.aggregator)
        if wrapper is not None:
            wrapper.num_sampled_clients = len(nodes)
        messages = list(self.aggregator.configure_train(server_round, arrays, ConfigRecord(dict(config)),
                                                        SampledGrid(grid, nodes)))
        return ConfigRecord({**config, **messages[0].content[CONFIG]}) if messages else config

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        self._grid = grid
        if self.fraction_evaluate == 0.0:
            return []
        server_round += self.round_offset
        nodes = self.sample(grid, self.fraction_evaluate, self.min_evaluate_nodes, server_round, stream=1)
        config = ConfigRecord({**config, "server-round": server_round})
        return self._messages(nodes, arrays, config, MessageType.EVALUATE)

    def _resend_to_unknown(self, server_round: int, replies: list[Message], message_type: str) -> list[Message]:
        """Nodes that lost the factors get them again with the same payload, in this round."""
        lost = [r for r in replies if _lacks_basis(r)]
        if not lost or self._grid is None:
            return replies
        nodes = [r.metadata.src_node_id for r in lost]
        log(WARNING, "round %s: node(s) %s lack the factors; sending them again", server_round, nodes)
        self.delivery.lost(nodes)
        self._round(server_round).bases_resent += len(nodes)
        wire, config = self._sent[message_type]
        again = self._grid.send_and_receive(
            [self._message(node, wire, config, message_type) for node in nodes], timeout=self.reply_timeout
        )
        return [r for r in replies if not _lacks_basis(r)] + list(again)

    # --- aggregation ----------------------------------------------------------------------
    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        server_round += self.round_offset
        replies = self._resend_to_unknown(server_round, list(replies), MessageType.TRAIN)
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
                log(WARNING, "round %s: rejected the update of node %s: %s",
                    server_round, reply.metadata.src_node_id, cleaned)
                self._round(server_round).rejected_updates += 1
                continue
            reply.content = cleaned  # only the checked arrays (as fp32) and metrics
            accepted.append(reply)
        accepted.sort(key=lambda r: (self.partitions.get(r.metadata.src_node_id, math.inf),
                                     r.metadata.src_node_id))  # sums independent of arrival order
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

    def _per_entry_round(self, server_round: int, accepted: list[Message], ranks: dict[int, int]):
        """Mixed ranks, per-entry: the per-entry weighted mean of the replies, then (a mean-based
        aggregator: FedAvgM, FedAdam, ...) the aggregator's step from that mean as its one reply."""
        arrays, metrics = super().aggregate_train(server_round, accepted)  # FedAvg of the zero-padded R
        if arrays is None:
            return None, None
        return self._stepped_from_mean(server_round, self._per_entry(arrays, accepted, ranks), metrics)

    def _stepped_from_mean(self, server_round: int, arrays: ArrayRecord | None, metrics):
        """A mean computed here (secure aggregation's, per-entry's) as the round's result: as it is
        without an aggregator, else the mean-based aggregator's (FedAvgM, FedAdam, ...) step from
        it, handed over as its one reply."""
        if arrays is None or self.aggregator is None:
            return arrays, metrics
        mean = Message(RecordDict({ARRAYS: arrays, METRICS: MetricRecord({"num-examples": 1})}),
                       dst_node_id=0, message_type=MessageType.TRAIN)
        stepped, _ = self._aggregated(server_round, [mean])
        return stepped, metrics

    def _per_entry(self, arrays: ArrayRecord, accepted: list[Message], ranks: dict[int, int]) -> ArrayRecord:
        """Mixed ranks, per-entry: each entry of R averaged over the clients that hold it."""
        expected, _ = self._sent[MessageType.TRAIN]
        full = int(expected[STACKED_R].shape[-1])
        node_ranks = [ranks.get(r.metadata.src_node_id, full) for r in accepted]
        weights = [float(r.content[METRICS]["num-examples"]) for r in accepted]
        stacked = per_entry_from_zero_padded(arrays[STACKED_R].numpy(), node_ranks, weights,
                                             cast_record(expected, "fp32")[STACKED_R].numpy())
        return ArrayRecord({k: Array(stacked) if k == STACKED_R else v for k, v in arrays.items()})

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
            problem = "it returned nothing" if arrays is None else check_update(cast_record(arrays, "fp32"), cast_record(expected, "fp32"))
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
            wrapper._pending_events.pop(server_round, None)  # noqa: SLF001 - Flower keeps it private

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.round_offset
        replies = self._resend_to_unknown(server_round, list(replies), MessageType.EVALUATE)
        self._count_failures(server_round, replies, MessageType.EVALUATE)
        accepted = [r for r in replies if not r.has_error() and self._checked_evaluation(server_round, r)]
        valid = [r.content[METRICS] for r in accepted if not r.has_error()]
        self.evaluate_replies[server_round] = valid
        return super().aggregate_evaluate(server_round, accepted)

    def evaluate_clients(self, grid: Grid, arrays: ArrayRecord, fraction: float, server_round: int) -> list[MetricRecord]:
        """A last federated evaluation on `fraction` of the nodes: each client's metrics."""
        self._grid = grid
        if not self.partitions:
            self.discover_partitions(grid)
        num_nodes = len(self.partitions)
        sample_size = min(num_nodes, max(1, round(fraction * num_nodes)))
        node_ids = self.sample(grid, sample_size / num_nodes, 1, server_round, stream=2)
        config = ConfigRecord({"server-round": server_round, "final-evaluation": True})
        replies = list(grid.send_and_receive(
            self._messages(node_ids, arrays, config, MessageType.EVALUATE), timeout=self.reply_timeout
        ))
        replies = self._resend_to_unknown(server_round, replies, MessageType.EVALUATE)
        self._count_failures(server_round, replies, "final")
        return [r.content[METRICS] for r in replies
                if not r.has_error() and self._checked_evaluation(server_round, r)]

    # --- checks ---------------------------------------------------------------------------
    def _fingerprint_problem(self, reply: Message) -> str | None:
        if _lacks_basis(reply):
            return "it still lacks the factors after they were sent again"
        content = reply.content
        fingerprint = content[STATUS].get("fingerprint") if STATUS in content else None
        if fingerprint != self.fingerprint:
            return f"it belongs to basis {str(fingerprint)[:12]}, not {self.fingerprint[:12]}"
        if METRICS not in content:
            return "the reply carries no metrics"
        return None

    def _checked_update(self, server_round: int, reply: Message, expected: ArrayRecord) -> RecordDict | str:
        """The reply reduced to its checked arrays (widened to fp32) and metrics, or a reason."""
        problem = self._fingerprint_problem(reply)
        if problem:
            return problem
        if ARRAYS not in reply.content:
            return "the reply carries no adapter arrays"
        arrays = reply.content[ARRAYS]
        rank = reply_rank(arrays, expected)  # mixed ranks: a device may train a top-left block
        problem = check_update(arrays, top_left_adapter(expected, rank) if rank else expected)
        if problem:
            return problem
        metrics = clean_metrics(reply.content[METRICS], TRAIN_METRICS)
        if isinstance(metrics, str):
            return metrics
        metrics = self._bounded_weight(server_round, reply, metrics)
        if isinstance(metrics, str):
            return metrics
        arrays = cast_record(arrays, "fp32")
        if rank:
            arrays[STACKED_R] = Array(zero_pad(arrays[STACKED_R].numpy(), int(expected[STACKED_R].shape[-1])))
            self._round(server_round).ranks[reply.metadata.src_node_id] = rank
        start = cast_record(expected, "fp32")
        self._round(server_round).update_norms.append(
            float(np.sqrt(sum(((arrays[k].numpy() - start[k].numpy()).astype(np.float64) ** 2).sum() for k in start.keys()))))
        return RecordDict({ARRAYS: arrays, METRICS: metrics})

    def _opened(self, server_round: int, reply: Message) -> str | None:
        """encrypt-updates: why the sealed update does not open (its "arrays" replaced in place)."""
        if self.sealing is None:
            return None
        return self.sealing.open_reply(reply, self._run_id(), server_round, self.fingerprint)

    def _run_id(self) -> int:
        run = getattr(self._grid, "run", None)  # None on a test Grid: the id new Messages get
        return run.run_id if run is not None else TaskIdentity.run_id

    def _bounded_weight(self, server_round: int, reply: Message, metrics: MetricRecord) -> MetricRecord | str:
        """"num-examples" as an integer at most the node's partition size (when known) and
        `max_client_examples`; a larger claim is clipped (logged, counted)."""
        claimed = metrics["num-examples"]
        if float(claimed) != int(claimed):
            return f"num-examples is {claimed!r}, not a whole number"
        node = reply.metadata.src_node_id
        bound = min(self.max_client_examples,
                    self.partition_sizes.get(self.partitions.get(node, -1), self.max_client_examples))
        if claimed > bound:
            log(WARNING, "round %s: node %s claims %s examples; weighted as %s", server_round, node,
                claimed, bound)
            self._round(server_round).clipped_weights += 1
            claimed = bound
        return MetricRecord({**metrics, "num-examples": int(claimed)})

    def _checked_evaluation(self, server_round: int, reply: Message) -> bool:
        """Keeps only the expected metrics of a good evaluation reply; False (logged) otherwise."""
        try:
            problem = self._fingerprint_problem(reply)
            metrics = problem or clean_metrics(reply.content[METRICS], self.evaluate_metrics)
            if not isinstance(metrics, str):
                metrics = metric_range_problem(metrics) or self._bounded_weight(server_round, reply, metrics)
        except Exception as err:  # never raises on what a client sent
            metrics = f"its check failed ({type(err).__name__})"
        if isinstance(metrics, str):
            log(WARNING, "round %s: ignored the evaluation of node %s: %s",
                server_round, reply.metadata.src_node_id, metrics)
            return False
        reply.content = RecordDict({METRICS: metrics})
        return True

    def _round(self, server_round: int) -> RoundStats:
        return self.stats.setdefault(server_round, RoundStats())

    def _count_failures(self, server_round: int, replies: list[Message], phase: str) -> None:
        """Logs error replies; counts them and the sampled nodes that never answered (timeouts)."""
        stats = self._round(server_round)
        for reply in replies:
            if reply.has_error():
                log(WARNING, "round %s: node %s failed: %s", server_round, reply.metadata.src_node_id,
                    reply.error.reason)
                stats.failures[f"{phase}-error"] = stats.failures.get(f"{phase}-error", 0) + 1
        sent = self._last_sent.get(phase if phase != "final" else MessageType.EVALUATE, 0)
        if len(replies) < sent:
            log(WARNING, "round %s: %s of %s node(s) did not answer within %s s", server_round,
                sent - len(replies), sent, self.reply_timeout)
            stats.failures[f"{phase}-timeout"] = stats.failures.get(f"{phase}-timeout", 0) + sent - len(replies)

    # --- checkpoint -----------------------------------------------------------------------
    def state(self) -> dict:
        """What a resumed run needs (JSON): per-round stats and evaluations, which partitions hold
        the factors (node ids change between processes; partitions do not)."""
        return {
            "stats": {str(r): asdict(s) for r, s in self.stats.items()},
            "evaluate_replies": {str(r): [dict(m) for m in ms] for r, ms in self.evaluate_replies.items()},
            "partitions_with_basis": sorted(self.partitions[n] for n in self.delivery.holding if n in self.partitions),
            "aggregator": aggregator_state(self.aggregator) if self.aggregator is not None else {},
        }

    def restore(self, state: dict, grid: Grid, factors_held: bool = True) -> None:
        """`factors_held`: trust that the partitions that held the factors still do (a node that
        lost them says so, and gets them again); False sends them to everyone once more."""
        self.stats = {int(r): RoundStats(**s) for r, s in state["stats"].items()}
        self.evaluate_replies = {int(r): [MetricRecord(m) for m in ms] for r, ms in state["evaluate_replies"].items()}
        self.discover_partitions(grid)
        holding = set(state["partitions_with_basis"]) if factors_held else set()
        self.delivery.holding = {n for n, p in self.partitions.items() if p in holding}
        if self.aggregator is not None:
            restore_aggregator(self.aggregator, state.get("aggregator", {}))


class SampledGrid(ForwardingGrid):
    """The Grid as the aggregator sees it in `configure_train`: only this round's sampled nodes."""

    def __init__(self, grid: Grid, nodes: list[int]):
        super().__init__(grid)
        self.nodes = list(nodes)

    def get_node_ids(self):
        return list(self.nodes)


def metric_range_problem(metrics: MetricRecord) -> str | None:
    """Accuracies in [0, 1], losses >= 0 (finiteness is checked before)."""
    for key, value in metrics.items():
        if key.startswith("accuracy") and not 0.0 <= value <= 1.0:
            return f"metric {key} is {value!r}, outside [0, 1]"
        if key.startswith("loss") and value < 0:
            return f"metric {key} is {value!r}, negative"
    return None


def reply_rank(arrays, expected: ArrayRecord) -> int | None:
    """r' when the reply's lora_R is a smaller square (L, r', r') than the (L, r, r) sent, else None
    (None also for anything malformed: check_update then names the problem)."""
    try:
        got, want = tuple(arrays[STACKED_R].shape), tuple(expected[STACKED_R].shape)
        if len(got) == 3 and got[0] == want[0] and got[1] == got[2] and 1 <= got[1] < want[1]:
            return int(got[1])
    except Exception:  # noqa: BLE001 - a peer's record: anything odd is for check_update to name
        pass
    return None


def _lacks_basis(reply: Message) -> bool:
    return (not reply.has_error() and STATUS in reply.content
            and reply.content[STATUS].get("error") == UNKNOWN_FINGERPRINT)
