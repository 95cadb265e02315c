"""The messages of a round: one per sampled node, the factors (or their recipe) only to nodes not
known to hold them, and again, in the same round, to a node that answers "unknown-fingerprint"."""

from collections.abc import Iterable
from logging import WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore import log

from shared.federation.protocol import ARRAYS, CONFIG, STATUS, UNKNOWN_FINGERPRINT, cast_record
from shared.federation.sealed_update import SERVER_KEY, SERVER_SIGNING_KEY


class NodeMessages:
    """Builds and re-sends the messages; uses `delivery`, `sealing`, `fingerprint`, `update_dtype`,
    `_grid`, `_sent` (message type -> payload) and `_last_sent`."""

    def _messages(
        self, node_ids: Iterable[int], arrays: ArrayRecord, config: ConfigRecord, message_type: str
    ) -> list[Message]:
        wire = cast_record(arrays, self.update_dtype)
        config = ConfigRecord({**config, "fingerprint": self.fingerprint})
        self._sent[message_type] = (wire, config)
        node_ids = list(node_ids)
        self._last_sent[message_type] = len(node_ids)
        return [self._message(node, wire, config, message_type) for node in node_ids]

    def _message(self, node_id: int, wire: ArrayRecord, config: ConfigRecord, message_type: str) -> Message:
        content = RecordDict({ARRAYS: wire, CONFIG: config})
        if self.delivery.attach(node_id, content) and self.sealing is not None:
            content[CONFIG] = ConfigRecord(
                {
                    **content[CONFIG],
                    SERVER_KEY: self.sealing.public_key,
                    SERVER_SIGNING_KEY: self.sealing.signing_public_key,
                }
            )
        return Message(content=content, message_type=message_type, dst_node_id=node_id)

    def _resend_to_unknown(self, server_round: int, replies: list[Message], message_type: str) -> list[Message]:
        """Nodes that lost the factors get them again with the same payload, in this round."""
        lost = [r for r in replies if lacks_basis(r)]
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
        return [r for r in replies if not lacks_basis(r)] + list(again)


def lacks_basis(reply: Message) -> bool:
    """The node answered that it holds no factors of this fingerprint."""
    return (
        not reply.has_error() and STATUS in reply.content and reply.content[STATUS].get("error") == UNKNOWN_FINGERPRINT
    )
