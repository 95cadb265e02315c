"""A closed-form start for the task head: multinomial logistic regression on frozen features.

The features are what the model's linear head sees (the pooled sentence embedding), captured
with a forward hook, so the fitted weights drop straight into the head. The L2 strength is
chosen on a validation split. This is also the "frozen embeddings + logistic regression"
baseline a personal model has to beat.
"""

from dataclasses import dataclass

import torch
from torch import nn

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # penalty on the summed squared weights, per mean example loss


@dataclass(frozen=True)
class LinearHead:
    weight: torch.Tensor  # (C, H)
    bias: torch.Tensor  # (C,)
    l2: float


def linear_head(model: nn.Module) -> nn.Linear | None:
    """The model's task head when it is one nn.Linear over pooled features (BERT-like or
    `PooledClassifier`); None otherwise (e.g. RoBERTa's two-layer head)."""
    head = getattr(model, "classifier", None)
    return head if isinstance(head, nn.Linear) else None


@torch.no_grad()
def head_inputs(
    model: nn.Module, loader, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(N, H) features the head receives and (N,) labels over `loader`; None without a linear
    head over 2-D features."""
    head = linear_head(model)
    if head is None:
        return None
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach().float().cpu()))
    labels = []
    try:
        model.to(device).eval()
        for batch in loader:
            model(**{k: v.to(device) for k, v in batch.items() if k != "labels"})
            labels.append(batch["labels"])
    finally:
        hook.remove()
    features = torch.cat(captured)
    return (features, torch.cat(labels)) if features.dim() == 2 else None


def refit(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float) -> LinearHead:
    """Logistic regression: minimise mean cross-entropy + l2 * |W|^2 with L-BFGS (a convex
    problem: same answer whatever the start)."""
    mean = features.mean(0)  # (H,)
    scale = (features - mean).pow(2).mean().sqrt().clamp(min=1e-6)  # one number: keeps the geometry
    x = (features - mean) / scale  # (N, H), unit RMS so one l2 grid fits every model
    lin = nn.Linear(x.shape[1], num_classes).double()
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    x, y = x.double(), labels
    optimizer = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(lin(x), y) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    # fold the scaling back in: W x' + b = (W / s) x + (b - W m / s)
    weight = lin.weight.detach() / scale.double()  # (C, H)
    bias = lin.bias.detach() - weight @ mean.double()  # (C,)
    return LinearHead(weight.float(), bias.float(), l2)


def accuracy(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> float:
    logits = features @ weight.T + bias  # (N, C)
    return float((logits.argmax(-1) == labels).float().mean()) if len(labels) else 0.0


def log_loss(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy of the head's predictions (0.0 with no examples)."""
    logits = features @ weight.T + bias  # (N, C)
    return float(nn.functional.cross_entropy(logits, labels)) if len(labels) else 0.0


def fit_linear_head(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    grid: tuple[float, ...] = L2_GRID,
) -> tuple[LinearHead, float]:
    """The logistic regression with the best validation accuracy over `grid` (ties: the
    stronger penalty), and that accuracy."""
    best: tuple[LinearHead, float] | None = None
    for l2 in sorted(grid, reverse=True):
        head = refit(*train, num_classes, l2)
        acc = accuracy(head.weight, head.bias, *val)
        if best is None or acc > best[1]:
            best = (head, acc)
    return best


def refit_on_both(
    train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], num_classes: int, l2: float
) -> LinearHead:
    """The same regression on training + validation features, once `l2` is chosen."""
    return refit(torch.cat([train[0], val[0]]), torch.cat([train[1], val[1]]), num_classes, l2)


def set_head(model: nn.Module, head: LinearHead) -> None:
    target = linear_head(model)
    with torch.no_grad():
        target.weight.copy_(head.weight.to(target.weight))
        target.bias.copy_(head.bias.to(target.bias))
