"""A Grid that hands every call to the Grid it wraps; subclasses override what they add to."""

from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid


class ForwardingGrid(Grid):
    def __init__(self, grid: Grid):
        self._grid = grid

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        return self._grid.send_and_receive(messages, timeout=timeout)

    def set_run(self, run):
        self._grid.set_run(run)

    @property
    def run(self):
        return self._grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self):
        return self._grid.get_node_ids()

    def push_messages(self, messages):
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids):
        return self._grid.pull_messages(message_ids)
