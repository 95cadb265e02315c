"""basis-delivery derive on a node: the factors announced by their recipe, derived here.

The server's first message carries the fingerprint and the recipe (shared/federation/basis_recipe.py)
instead of the factors. The node derives them from the base weights it holds, by the same path
as `client.run` and `client.export` (shared/artifacts/open_adapter.py:derived_basis), keeps them
only when their fingerprint is the announced one, and says what it did in its reply's status;
a node that could not derive them answers "unknown-fingerprint" and is shipped them.
"""

from functools import lru_cache

from client.node_state import NodeState
from shared.artifacts.open_adapter import derived_basis
from shared.base_models import canonical_model_id, load_base_model
from shared.errors import LoraXSError
from shared.federation.basis_recipe import BasisRecipe
from shared.federation.protocol import DERIVED, MISMATCH
from shared.federation.run_config import FederationConfig


def derive_announced_factors(
    message_config, config: FederationConfig, state: NodeState, fingerprint: str
) -> str | None:
    """None: no recipe came, or the node already holds the factors. DERIVED: derived, matched,
    stored. MISMATCH: the recipe is not this node's run config's (a message never makes a device
    load another model), or the derived factors have another fingerprint."""
    recipe = BasisRecipe.from_config(message_config)
    if recipe is None or state.has_basis(fingerprint):
        return None
    model_id, lora = canonical_model_id(config.model), config.lora_config()
    if recipe != BasisRecipe.of(model_id, lora):
        return MISMATCH
    try:
        basis = derived_basis(model_id, config.task, lora, fingerprint, model=_base_model(model_id, config.task))
    except LoraXSError:  # another fingerprint (or the model would not load): the bundle will come
        return MISMATCH
    state.store_basis(basis, model_id)
    return DERIVED


@lru_cache(maxsize=1)
def _base_model(model_id: str, task: str):
    """The base weights, loaded once per process and only read: a Ray worker serves many
    simulated nodes in turn, and each still runs its own SVD (in deployment every message is a
    fresh process, so this saves nothing there)."""
    return load_base_model(model_id, task)
