"""Every reply checked before it counts: fingerprint, keys, shapes, dtype, finite values, a bounded
weight, metrics in range, a sealed update that opens. A checker never raises on what a client
sent: anything odd is a rejection with a reason."""

from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore import log
from flwr.supercore.task_identity import TaskIdentity

from server.node_messages import lacks_basis
from shared.federation.protocol import (
    ARRAYS,
    METRICS,
    STACKED_R,
    STATUS,
    TRAIN_METRICS,
    cast_record,
    check_update,
    clean_metrics,
    top_left_adapter,
)
from shared.loraxs.mixed_rank import zero_pad


class ReplyChecks:
    """Checks replies; uses `fingerprint`, `sealing`, `partitions`, `partition_sizes`,
    `max_client_examples`, `evaluate_metrics` and the round's stats."""

    def _fingerprint_problem(self, reply: Message) -> str | None:
        if lacks_basis(reply):
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
            float(
                np.sqrt(
                    sum(((arrays[k].numpy() - start[k].numpy()).astype(np.float64) ** 2).sum() for k in start.keys())
                )
            )
        )
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
        """ "num-examples" as an integer at most the node's partition size (when known) and
        `max_client_examples`; a larger claim is clipped (logged, counted)."""
        claimed = metrics["num-examples"]
        if float(claimed) != int(claimed):
            return f"num-examples is {claimed!r}, not a whole number"
        node = reply.metadata.src_node_id
        bound = min(
            self.max_client_examples, self.partition_sizes.get(self.partitions.get(node, -1), self.max_client_examples)
        )
        if claimed > bound:
            log(WARNING, "round %s: node %s claims %s examples; weighted as %s", server_round, node, claimed, bound)
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
            log(
                WARNING,
                "round %s: ignored the evaluation of node %s: %s",
                server_round,
                reply.metadata.src_node_id,
                metrics,
            )
            return False
        reply.content = RecordDict({METRICS: metrics})
        return True


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
    except Exception:
        pass
    return None
