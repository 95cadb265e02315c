"""Bytes on the wire, measured on the serialized messages, never computed from shapes.

Flower 1.42 moves a message as a tree of content-addressed objects (Message, RecordDict,
ArrayRecord, Array, ArrayChunk, ...): each is deflated to bytes and pushed/pulled under its
64-character sha256 id. `wire_bytes` sums exactly that: every distinct object's deflated bytes
plus its id. Transport framing (HTTP/gRPC headers) comes on top and is not counted.
`MeteredGrid` wraps the ServerApp's Grid and records every message sent and every reply.
"""

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message, MessageType
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import InflatableObject, get_all_nested_objects

from server.forwarding_grid import ForwardingGrid
from shared.federation.basis_recipe import KEYS as RECIPE_KEYS
from shared.federation.protocol import BASIS, CONFIG, DERIVED, FACTORS, STATUS

OBJECT_ID_BYTES = 64  # hex sha256 id that travels with every object


def wire_bytes(obj: InflatableObject) -> int:
    return sum(len(o.deflate()) + OBJECT_ID_BYTES for o in get_all_nested_objects(obj).values())


@dataclass
class PhaseTraffic:
    """Bytes of one phase (train / evaluate / final) of one round."""

    messages_down: int = 0
    bytes_down: int = 0
    basis_bytes_down: int = 0
    bases_sent: int = 0  # factor bundles shipped
    recipes_sent: int = 0  # messages carrying the factors' recipe (basis-delivery derive)
    bases_derived: int = 0  # replies of nodes that derived the factors themselves (and matched)
    replies_up: int = 0
    bytes_up: int = 0


@dataclass
class TrafficMeter:
    """(round, phase) -> PhaseTraffic, and how often each node received the factors."""

    phases: dict[tuple[int, str], PhaseTraffic] = field(default_factory=lambda: defaultdict(PhaseTraffic))
    bases_per_node: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    nodes_contacted: set[int] = field(default_factory=set)  # nodes sent a train or evaluate message
    nodes_derived: set[int] = field(default_factory=set)  # nodes that said they derived the factors


def message_phase(message: Message) -> tuple[int, str]:
    config = message.content[CONFIG] if message.has_content() and CONFIG in message.content else {}
    phase = "final" if config.get("final-evaluation") else message.metadata.message_type
    return int(config.get("server-round", 0)), phase


class MeteredGrid(ForwardingGrid):
    """A Grid that measures what passes through `send_and_receive` (all the strategy uses)."""

    def __init__(self, grid: Grid, meter: TrafficMeter):
        super().__init__(grid)
        self.meter = meter

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        messages = list(messages)
        key = None
        for message in messages:
            key = message_phase(message)
            phase = self.meter.phases[key]
            phase.messages_down += 1
            phase.bytes_down += wire_bytes(message)
            node = message.metadata.dst_node_id
            if message.metadata.message_type != MessageType.QUERY:  # the one partition query is not a round
                self.meter.nodes_contacted.add(node)
            if BASIS in message.content:
                phase.basis_bytes_down += wire_bytes(message.content[BASIS])
                phase.bases_sent += 1
                self.meter.bases_per_node[node] += 1
            if CONFIG in message.content and RECIPE_KEYS[0] in message.content[CONFIG]:
                phase.recipes_sent += 1
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        if key is not None:
            for reply in replies:
                self.meter.phases[key].replies_up += 1
                self.meter.phases[key].bytes_up += wire_bytes(reply)
                if _derived(reply):
                    self.meter.phases[key].bases_derived += 1
                    self.meter.nodes_derived.add(reply.metadata.src_node_id)
        return replies


def _derived(reply: Message) -> bool:
    """The node says it derived the factors for this message (a client's claim, only counted)."""
    try:
        return not reply.has_error() and reply.content[STATUS].get(FACTORS) == DERIVED
    except Exception:
        return False
