"""What the layer counts per round (the report reads it): good updates, rejections, clipped
weights, resent factors, failures and timeouts."""

from dataclasses import dataclass, field
from logging import WARNING

from flwr.app import Message, MessageType
from flwr.supercore import log


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


class RoundCounting:
    """The strategy's `stats` (round -> RoundStats) and its failure counts; uses `_last_sent` and
    `reply_timeout`."""

    def _round(self, server_round: int) -> RoundStats:
        return self.stats.setdefault(server_round, RoundStats())

    def _count_failures(self, server_round: int, replies: list[Message], phase: str) -> None:
        """Logs error replies; counts them and the sampled nodes that never answered (timeouts)."""
        stats = self._round(server_round)
        for reply in replies:
            if reply.has_error():
                log(
                    WARNING,
                    "round %s: node %s failed: %s",
                    server_round,
                    reply.metadata.src_node_id,
                    reply.error.reason,
                )
                stats.failures[f"{phase}-error"] = stats.failures.get(f"{phase}-error", 0) + 1
        sent = self._last_sent.get(phase if phase != "final" else MessageType.EVALUATE, 0)
        if len(replies) < sent:
            log(
                WARNING,
                "round %s: %s of %s node(s) did not answer within %s s",
                server_round,
                sent - len(replies),
                sent,
                self.reply_timeout,
            )
            stats.failures[f"{phase}-timeout"] = stats.failures.get(f"{phase}-timeout", 0) + sent - len(replies)
