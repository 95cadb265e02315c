"""One reply per node and round, whatever the Grid (or a relay replaying messages) returns."""

from logging import WARNING

from flwr.app import Message
from flwr.supercore import log


def one_reply_per_node(server_round: int, replies: list[Message]) -> list[Message]:
    """The first reply of each `src_node_id`, in order; the repeats are dropped and logged."""
    seen: set[int] = set()
    kept = []
    for reply in replies:
        node = reply.metadata.src_node_id
        if node in seen:
            log(WARNING, "round %s: dropped a repeated reply from node %s", server_round, node)
            continue
        seen.add(node)
        kept.append(reply)
    return kept
