"""FedAvg for LoRA-XS: the factors go once to each node, updates are checked, then averaged.

Built on `flwr.serverapp.strategy.FedAvg`: its sampling, round loop and weighted mean are used
as they are. Averaging the stacked r x r matrices and the head is exact in delta W, since every
client shares one basis: mean_k(s B R_k A) = s B mean_k(R_k) A. What this class adds:
  * per-node messages: the factor bundle rides along only to nodes not known to hold it;
  * a node answering "unknown-fingerprint" (cache lost) gets the bundle again, in the same round;
  * replies with wrong keys/shapes/dtype, NaN/Inf or another fingerprint are rejected with a
    logged reason, and the round goes on with the rest;
  * fp16 updates are widened to fp32 before averaging.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from logging import WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from flwr.supercore import log

from shared.federation.protocol import (
    ARRAYS, BASIS, CONFIG, METRICS, STATUS, TRAIN_METRICS, UNKNOWN_FINGERPRINT, cast_record,
    check_update, clean_metrics,
)

REPLY_TIMEOUT = 3600.0


@dataclass
class RoundStats:
    clients_trained: int = 0
    rejected_updates: int = 0
    bases_resent: int = 0


class LoraXSFedAvg(FedAvg):
    def __init__(self, basis_record: ArrayRecord, fingerprint: str, update_dtype: str,
                 evaluate_metrics: tuple[str, ...], **fedavg_args):
        super().__init__(**fedavg_args)
        self.basis_record = basis_record
        self.fingerprint = fingerprint
        self.update_dtype = update_dtype
        self.evaluate_metrics = evaluate_metrics
        self.nodes_with_basis: set[int] = set()
        self.stats: dict[int, RoundStats] = {}
        self.evaluate_replies: dict[int, list[MetricRecord]] = {}
        self._grid: Grid | None = None
        self._sent: dict[str, tuple[ArrayRecord, ConfigRecord]] = {}  # message type -> payload

    # --- messages -------------------------------------------------------------------------
    def _messages(self, node_ids: Iterable[int], arrays: ArrayRecord, config: ConfigRecord,
                  message_type: str) -> list[Message]:
        wire = cast_record(arrays, self.update_dtype)
        config = ConfigRecord({**config, "fingerprint": self.fingerprint})
        self._sent[message_type] = (wire, config)
        return [self._message(node, wire, config, message_type) for node in node_ids]

    def _message(self, node_id: int, wire: ArrayRecord, config: ConfigRecord, message_type: str) -> Message:
        content = RecordDict({ARRAYS: wire, CONFIG: config})
        if node_id not in self.nodes_with_basis:
            content[BASIS] = self.basis_record
            self.nodes_with_basis.add(node_id)
        return Message(content=content, message_type=message_type, dst_node_id=node_id)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._grid = grid
        sampled = super().configure_train(server_round, arrays, config, grid)  # samples, sets round
        nodes = [m.metadata.dst_node_id for m in sampled]
        return self._messages(nodes, arrays, config, MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        self._grid = grid
        sampled = super().configure_evaluate(server_round, arrays, config, grid)
        nodes = [m.metadata.dst_node_id for m in sampled]
        return self._messages(nodes, arrays, config, MessageType.EVALUATE)

    def _resend_to_unknown(self, server_round: int, replies: list[Message], message_type: str) -> list[Message]:
        """Nodes that lost the factors get them again with the same payload, in this round."""
        lost = [r for r in replies if _lacks_basis(r)]
        if not lost or self._grid is None:
            return replies
        nodes = [r.metadata.src_node_id for r in lost]
        log(WARNING, "round %s: node(s) %s lack the factors; sending them again", server_round, nodes)
        self.nodes_with_basis.difference_update(nodes)
        self._round(server_round).bases_resent += len(nodes)
        wire, config = self._sent[message_type]
        again = self._grid.send_and_receive(
            [self._message(node, wire, config, message_type) for node in nodes], timeout=REPLY_TIMEOUT
        )
        return [r for r in replies if not _lacks_basis(r)] + list(again)

    # --- aggregation ----------------------------------------------------------------------
    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = self._resend_to_unknown(server_round, list(replies), MessageType.TRAIN)
        _log_failures(server_round, replies)
        expected, _ = self._sent[MessageType.TRAIN]
        accepted = []
        for reply in replies:
            if not reply.has_error():
                cleaned = self._checked_update(reply, expected)
                if isinstance(cleaned, str):
                    log(WARNING, "round %s: rejected the update of node %s: %s",
                        server_round, reply.metadata.src_node_id, cleaned)
                    self._round(server_round).rejected_updates += 1
                    continue
                reply.content = cleaned  # only the checked arrays (as fp32) and metrics
            accepted.append(reply)
        self._round(server_round).clients_trained = sum(not r.has_error() for r in accepted)
        return super().aggregate_train(server_round, accepted)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = self._resend_to_unknown(server_round, list(replies), MessageType.EVALUATE)
        _log_failures(server_round, replies)
        accepted = [r for r in replies if r.has_error() or self._checked_evaluation(server_round, r)]
        valid = [r.content[METRICS] for r in accepted if not r.has_error()]
        self.evaluate_replies[server_round] = valid
        return super().aggregate_evaluate(server_round, accepted)

    def evaluate_clients(self, grid: Grid, arrays: ArrayRecord, fraction: float, server_round: int) -> list[MetricRecord]:
        """A last federated evaluation on `fraction` of the nodes: each client's metrics."""
        self._grid = grid
        num_nodes = len(list(grid.get_node_ids()))
        sample_size = min(num_nodes, max(1, round(fraction * num_nodes)))
        node_ids, _ = sample_nodes(grid, self.min_available_nodes, sample_size)
        config = ConfigRecord({"server-round": server_round, "final-evaluation": True})
        replies = list(grid.send_and_receive(
            self._messages(node_ids, arrays, config, MessageType.EVALUATE), timeout=REPLY_TIMEOUT
        ))
        replies = self._resend_to_unknown(server_round, replies, MessageType.EVALUATE)
        _log_failures(server_round, replies)
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

    def _checked_update(self, reply: Message, expected: ArrayRecord) -> RecordDict | str:
        """The reply reduced to its checked arrays (widened to fp32) and metrics, or a reason."""
        problem = self._fingerprint_problem(reply)
        if problem:
            return problem
        if ARRAYS not in reply.content:
            return "the reply carries no adapter arrays"
        problem = check_update(reply.content[ARRAYS], expected)
        if problem:
            return problem
        metrics = clean_metrics(reply.content[METRICS], TRAIN_METRICS)
        if isinstance(metrics, str):
            return metrics
        return RecordDict({ARRAYS: cast_record(reply.content[ARRAYS], "fp32"), METRICS: metrics})

    def _checked_evaluation(self, server_round: int, reply: Message) -> bool:
        """Keeps only the expected metrics of a good evaluation reply; False (logged) otherwise."""
        problem = self._fingerprint_problem(reply)
        metrics = problem or clean_metrics(reply.content[METRICS], self.evaluate_metrics)
        if isinstance(metrics, str):
            log(WARNING, "round %s: ignored the evaluation of node %s: %s",
                server_round, reply.metadata.src_node_id, metrics)
            return False
        reply.content = RecordDict({METRICS: metrics})
        return True

    def _round(self, server_round: int) -> RoundStats:
        return self.stats.setdefault(server_round, RoundStats())


def _lacks_basis(reply: Message) -> bool:
    return (not reply.has_error() and STATUS in reply.content
            and reply.content[STATUS].get("error") == UNKNOWN_FINGERPRINT)


def _log_failures(server_round: int, replies: list[Message]) -> None:
    for reply in replies:
        if reply.has_error():
            log(WARNING, "round %s: node %s failed: %s", server_round, reply.metadata.src_node_id,
                reply.error.reason)
