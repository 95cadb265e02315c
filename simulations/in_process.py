"""A Grid that delivers every message to a ClientApp in this very process, one at a time.

For tests and debugging without Ray: the ServerApp logic runs unchanged on it. Messages and
replies are round-tripped through Flower's protobuf serde, as they would be between processes,
so neither side can share or mutate the other's objects. Each node keeps its own Context
(node config `partition-id` / `num-partitions`, and a `state` that persists across messages).
"""

from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

FIRST_NODE_ID = 1001
RUN_ID = 1


def _copy(message: Message) -> Message:
    return message_from_proto(message_to_proto(message))


class InProcessGrid(Grid):
    def __init__(
        self, client_app: Callable[[Message, Context], Message], num_nodes: int, run_config: dict | None = None
    ):
        # Messages created by the ServerApp take their run and sender from the process identity.
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = RUN_ID, 1, SUPERLINK_NODE_ID
        self.client_app = client_app
        self.contexts = {
            FIRST_NODE_ID + i: Context(
                run_id=RUN_ID,
                node_id=FIRST_NODE_ID + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for i in range(num_nodes)
        }

    def partition_of(self, node_id: int) -> int:
        return int(self.contexts[node_id].node_config["partition-id"])

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def deliver(self, message: Message) -> Message:
        """One message to its node's ClientApp; an exception becomes an error reply."""
        message = _copy(message)
        message.metadata.__dict__["_message_id"] = uuid4().hex
        context = self.contexts[message.metadata.dst_node_id]
        try:
            reply = self.client_app(message, context)
        except Exception as err:  # as Flower does: the ServerApp sees an error reply
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=repr(err)), reply_to=message)
        return _copy(reply)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        return [self.deliver(m) for m in messages]

    def push_messages(self, messages):
        raise NotImplementedError("InProcessGrid only supports send_and_receive")

    def pull_messages(self, message_ids):
        raise NotImplementedError("InProcessGrid only supports send_and_receive")

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content=content, message_type=message_type, dst_node_id=dst_node_id, group_id=group_id, ttl=ttl)

    def set_run(self, run):
        self._run = run

    @property
    def run(self):
        return getattr(self, "_run", None)
