"""AdamW, global-norm gradient clipping and the linear warmup schedule in numpy, with the numbers
torch uses (betas 0.9 / 0.999, eps 1e-8, decoupled weight decay)."""

import numpy as np

from shared.recipe.backend import Params


def warmup_linear(step: int, warmup_steps: int, total_steps: int) -> float:
    """lr factor at `step`: step / warmup while warming up, then linear decay to 0 at total."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def clip_by_global_norm(grads: Params, max_norm: float) -> float:
    """Scale `grads` in place so their joint L2 norm is at most `max_norm`; returns the norm."""
    norm = float(np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values())))
    if norm > max_norm:
        for g in grads.values():
            g *= max_norm / (norm + 1e-6)
    return norm


class AdamW:
    """One learning rate per parameter key; `step` updates `params` in place."""

    def __init__(self, params: Params, lrs: dict[str, float], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.lrs, self.betas, self.eps, self.weight_decay = lrs, betas, eps, weight_decay
        self.m = {k: np.zeros_like(v, dtype=np.float32) for k, v in params.items() if k in lrs}
        self.v = {k: np.zeros_like(v, dtype=np.float32) for k, v in params.items() if k in lrs}
        self.t = 0

    def step(
        self, params: Params, grads: Params, lr_factor: float = 1.0, masks: dict[str, np.ndarray] | None = None
    ) -> None:
        """`masks`: key -> boolean array broadcastable to the param: only those entries move."""
        self.t += 1
        b1, b2 = self.betas
        for key, lr in self.lrs.items():
            lr = lr * lr_factor
            g, m, v = grads[key].astype(np.float32), self.m[key], self.v[key]
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            m_hat = m / (1 - b1**self.t)
            v_hat = v / (1 - b2**self.t)
            update = lr * (m_hat / (np.sqrt(v_hat) + self.eps) + self.weight_decay * params[key])
            if masks is not None and key in masks:
                update = update * masks[key]
            params[key] -= update.astype(params[key].dtype)
