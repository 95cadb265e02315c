"""How far an adapter may move the layers it adapts: a file whose change to a layer dwarfs the
layer itself cannot come from training (a crafted or broken file), and is refused before use.

    delta W = scale * B R A,   B = U_r (orthonormal columns),   A = Sigma_r V_r^T
    ||delta W||_2 = scale * ||R A||_2   and   ||A||_2 = sigma_1(W)
so the relative effect of a layer's adapter, ||delta W||_2 / sigma_1(W), is read from the
(r, in) factors alone. Trained adapters stay far below MAX_RELATIVE_EFFECT (fine-tuning nudges
a layer; it does not replace it): a MiniLM personal adapter from `client.run` (120 reviews,
5 epochs at lr 0.02) reaches 0.57 at most; seeded R ~ N(0, 1) at scale 4 about 15; the crafted
file of the red team (MiniLM rank 16, alpha 1e6, every R 1e4) 4e9 to 9e9 (tests/test_untrusted_inputs.py).
"""

import torch
from torch import nn

from shared.errors import LoraXSError
from shared.loraxs.model import adapted_layers

MAX_RELATIVE_EFFECT = 100.0  # ||delta W||_2 / sigma_1(W); random R ~ N(0, 1) at scale 4 gives about 15


def relative_effects(model: nn.Module) -> dict[str, float]:
    """Adapted layer name -> ||delta W||_2 / sigma_1(W) of the adapter loaded in `model`."""
    effects = {}
    with torch.no_grad():
        for name, layer in adapted_layers(model).items():
            factor = layer.lora_A.float()  # (r, in)
            sigma = torch.linalg.matrix_norm(factor, ord=2)  # sigma_1 of W
            change = layer.scale * torch.linalg.matrix_norm(layer.lora_R.float() @ factor, ord=2)  # (r, r) @ (r, in)
            effects[name] = float(change / sigma) if sigma > 0 else float("inf") if change > 0 else 0.0
    return effects


def check_adapter_effect(model: nn.Module, source: str) -> None:
    """LoraXSError when the loaded adapter changes some layer by more than MAX_RELATIVE_EFFECT
    times its largest singular value (or by a non-finite amount)."""
    for name, effect in relative_effects(model).items():
        if not effect <= MAX_RELATIVE_EFFECT:
            raise LoraXSError(
                f"{source} cannot be a trained adapter: it changes layer {name} by {effect:.3g} "
                f"times its largest singular value (at most {MAX_RELATIVE_EFFECT:g} is accepted)"
            )
