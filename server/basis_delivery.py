"""How a node comes to hold the frozen factors: it derives them (the recipe rides along) or they
are shipped (the bundle rides along), once per node; a node that could not derive them, or lost
them, is shipped the bundle through the strategy's resend path, in the same round.

    basis-delivery derive: first message = fingerprint + recipe (shared/federation/basis_recipe.py)
    basis-delivery ship:   first message = fingerprint + bundle (~1.6 MB for MiniLM at rank 16)

Kept apart from the strategy so that any strategy can ask it what to attach.
"""

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from shared.federation.protocol import BASIS, CONFIG


class BasisDelivery:
    """`bundle`: the packed factors (in basis-dtype); `recipe`: the recipe's config entries, or
    None to always ship."""

    def __init__(self, bundle: ArrayRecord, recipe: dict | None):
        self.bundle = bundle
        self.recipe = recipe
        self.holding: set[int] = set()  # nodes sent the factors or their recipe (trusted to hold them)
        self.must_ship: set[int] = set()  # nodes that answered "unknown-fingerprint": the bundle, always

    def attach(self, node_id: int, content: RecordDict) -> bool:
        """Adds the recipe or the bundle to a message for a node not known to hold the factors;
        True when it did (the node's first message, or the one after it lost them)."""
        if node_id in self.holding:
            return False
        if self.recipe is not None and node_id not in self.must_ship:
            content[CONFIG] = ConfigRecord({**content[CONFIG], **self.recipe})
        else:
            content[BASIS] = self.bundle
        self.holding.add(node_id)
        return True

    def lost(self, node_ids: list[int]) -> None:
        """These nodes lack the factors: their next message ships the bundle."""
        self.holding.difference_update(node_ids)
        self.must_ship.update(node_ids)
