"""The closed-form head: multinomial logistic regression on pooled features, in numpy.

    minimise  mean cross-entropy(x W'^T + b' + o) + l2 * |W'|^2      x = (f - m) / s   (N, H)

(`m` the features' mean, `s` one number: their RMS spread, so one penalty grid fits every model)
by L-BFGS (as torch.optim.LBFGS did before): a convex problem with one answer whatever the solver. The answer is
folded back to W = W' / s, b = b' - W m so that logits = f @ W.T + b on raw features. `o` (N, C)
is a fixed logit offset (default 0): another part of the model (a lexical part) the head fits around.
"""

from dataclasses import dataclass

import numpy as np

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # penalty on the summed squared weights, per mean example loss
MAX_ITERATIONS = 300
MEMORY = 10
TOLERANCE = 1e-7  # on the gradient's largest entry
CHANGE_TOLERANCE = 1e-9  # on the loss between iterations


@dataclass(frozen=True)
class Head:
    weight: np.ndarray  # (C, H) float32
    bias: np.ndarray  # (C,) float32
    l2: float


def logits(weight: np.ndarray, bias: np.ndarray, features: np.ndarray) -> np.ndarray:
    return features @ weight.T + bias  # (N, H) @ (H, C) -> (N, C)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)  # (N, C)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def example_losses(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) cross-entropy of each row of logits `z` (N, C)."""
    return -log_softmax(z.astype(np.float64))[np.arange(len(labels)), labels]


def accuracy(weight, bias, features: np.ndarray, labels: np.ndarray) -> float:
    return float((logits(weight, bias, features).argmax(1) == labels).mean()) if len(labels) else 0.0


def log_loss(weight, bias, features: np.ndarray, labels: np.ndarray) -> float:
    return float(example_losses(logits(weight, bias, features), labels).mean()) if len(labels) else 0.0


def _objective(
    theta: np.ndarray, x1: np.ndarray, onehot: np.ndarray, l2: float, offset: np.ndarray | float = 0.0
) -> tuple[float, np.ndarray, np.ndarray]:
    """Loss, the softmax (N, C) and the gradient (C, H + 1) at theta (C, H + 1) = [W' | b']."""
    z = x1 @ theta.T + offset  # (N, H + 1) @ (H + 1, C) -> (N, C)
    logp = log_softmax(z)
    p = np.exp(logp)
    loss = -(onehot * logp).sum() / len(x1) + l2 * (theta[:, :-1] ** 2).sum()
    grad = (p - onehot).T @ x1 / len(x1)  # (C, N) @ (N, H + 1) -> (C, H + 1)
    grad[:, :-1] += 2 * l2 * theta[:, :-1]
    return float(loss), p, grad


def _lbfgs(theta: np.ndarray, x1: np.ndarray, onehot: np.ndarray, l2: float, offset=0.0) -> np.ndarray:
    """L-BFGS (memory 10) with a backtracking line search, torch.optim.LBFGS's stopping rules."""
    loss, _, grad = _objective(theta, x1, onehot, l2, offset)
    steps, grads = [], []
    for _ in range(MAX_ITERATIONS):
        if np.abs(grad).max() < TOLERANCE:
            break
        direction = -grad.ravel()
        alphas = []
        for s, y in reversed(list(zip(steps, grads))):  # two-loop recursion
            alpha = float(s @ direction) / float(y @ s)
            direction -= alpha * y
            alphas.append(alpha)
        if steps:
            direction *= float(steps[-1] @ grads[-1]) / float(grads[-1] @ grads[-1])
        else:
            direction *= min(1.0, 1.0 / np.abs(grad).sum())
        for (s, y), alpha in zip(zip(steps, grads), reversed(alphas)):
            beta = float(y @ direction) / float(y @ s)
            direction += (alpha - beta) * s
        slope, t = float(grad.ravel() @ direction), 1.0
        if slope >= 0:  # not a descent direction: restart from the gradient
            steps, grads = [], []
            continue
        while True:
            new = theta + t * direction.reshape(theta.shape)
            new_loss, _, new_grad = _objective(new, x1, onehot, l2, offset)
            if new_loss <= loss + 1e-4 * t * slope or t < 1e-10:
                break
            t /= 2
        s, y = (new - theta).ravel(), (new_grad - grad).ravel()
        if float(y @ s) > 1e-12:
            steps, grads = (steps + [s])[-MEMORY:], (grads + [y])[-MEMORY:]
        change, theta, loss, grad = abs(loss - new_loss), new, new_loss, new_grad
        if change < CHANGE_TOLERANCE:
            break
    return theta


def fit_head(
    features: np.ndarray, labels: np.ndarray, num_classes: int, l2: float, offset: np.ndarray | None = None
) -> Head:
    """The penalised logistic regression of `labels` (N,) on `features` (N, H), around the fixed
    logits `offset` (N, C) when given."""
    f = features.astype(np.float64)
    mean = f.mean(0)  # (H,)
    scale = max(float(np.sqrt(((f - mean) ** 2).mean())), 1e-6)
    x1 = np.hstack([(f - mean) / scale, np.ones((len(f), 1))])  # (N, H + 1)
    onehot = np.eye(num_classes)[labels]  # (N, C)
    offset = 0.0 if offset is None else np.asarray(offset, dtype=np.float64)
    theta = _lbfgs(np.zeros((num_classes, x1.shape[1])), x1, onehot, l2, offset)  # (C, H + 1)
    weight = theta[:, :-1] / scale  # (C, H)
    bias = theta[:, -1] - weight @ mean  # (C,)
    return Head(weight.astype(np.float32), bias.astype(np.float32), l2)


def choose_head(
    fit: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    grid: tuple[float, ...] = L2_GRID,
    offsets: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[Head, float]:
    """The regression with the best validation accuracy over `grid` (ties: the stronger
    penalty), and that accuracy; `offsets`: (fit (N, C), val (N_val, C)) fixed logits it fits around."""
    best: tuple[Head, float] | None = None
    fit_offset, val_offset = offsets if offsets is not None else (None, 0.0)
    for l2 in sorted(grid, reverse=True):
        head = fit_head(*fit, num_classes, l2, fit_offset)
        z = logits(head.weight, head.bias, val[0]) + val_offset  # (N_val, C)
        acc = float((z.argmax(1) == val[1]).mean()) if len(val[1]) else 0.0
        if best is None or acc > best[1]:
            best = (head, acc)
    return best
