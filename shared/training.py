"""Local training and evaluation of an adapted model: used by the ClientApp, the on-device
client and the benchmarks alike. Only parameters with requires_grad (R matrices, head) train."""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from shared.data.batches import IGNORE_INDEX
from shared.errors import LoraXSError
from shared.loraxs.model import head_parameter_names


@dataclass(frozen=True)
class TrainConfig:
    """epochs: passes over the loader; max_steps (> 0) caps the optimizer steps instead.
    lr: for the r x r matrices; head_lr: for the task head (None = lr).
    proximal_mu: FedProx's mu / 2 * ||theta - theta_start||^2 over the trainable parameters."""

    epochs: float = 1.0
    lr: float = 2e-3
    head_lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_steps: int = 0
    proximal_mu: float = 0.0

    def __post_init__(self):
        if self.epochs <= 0 and self.max_steps <= 0:
            raise LoraXSError("training needs epochs > 0 or max_steps > 0")
        if not self.lr > 0 or (self.head_lr is not None and not self.head_lr > 0):
            raise LoraXSError("learning rates must be positive")
        if not 0 <= self.warmup_ratio < 1:
            raise LoraXSError("warmup_ratio must be in [0, 1)")
        if not self.proximal_mu >= 0:
            raise LoraXSError("proximal_mu must be >= 0")


@dataclass(frozen=True)
class TrainResult:
    loss: float
    examples: int
    steps: int
    seconds: float

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float  # classification accuracy, or next-token accuracy for a causal LM
    examples: int


def linear_warmup_schedule(optimizer, warmup_steps: int, total_steps: int):
    """lr x (step / warmup) while warming up, then linear decay to 0 at `total_steps`.

    The same schedule as transformers' get_linear_schedule_with_warmup, without importing the
    trainer stack (seconds per fresh ClientApp process)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    head = set(head_parameter_names(model))
    groups = {"adapter": [], "head": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups["head" if name in head else "adapter"].append(param)
    if not groups["adapter"] and not groups["head"]:
        raise LoraXSError("the model has no trainable parameters (was LoRA-XS injected?)")
    head_lr = config.head_lr if config.head_lr is not None else config.lr
    param_groups = [
        {"params": groups["adapter"], "lr": config.lr},
        {"params": groups["head"], "lr": head_lr},
    ]
    return torch.optim.AdamW([g for g in param_groups if g["params"]], weight_decay=config.weight_decay)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def train(
    model: nn.Module,
    loader,
    config: TrainConfig,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "train",
    after_epoch: Callable[[int], bool] | None = None,
) -> TrainResult:
    """AdamW + linear schedule with warmup over `loader`; returns mean loss and throughput.

    after_epoch(steps_done), called after every full pass, may stop training by returning True
    (early stopping); the model is left in eval mode whenever it is called."""
    if len(loader) == 0:
        raise LoraXSError("no training examples")
    steps = config.max_steps or math.ceil(config.epochs * len(loader))
    optimizer = _optimizer(model, config)
    scheduler = linear_warmup_schedule(optimizer, int(config.warmup_ratio * steps), steps)
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in trainable] if config.proximal_mu > 0 else []
    total_loss, examples, step = 0.0, 0, 0
    start = time.perf_counter()
    with tqdm(total=steps, desc=desc, disable=not progress, leave=False) as bar:
        while step < steps:
            for index, batch in enumerate(loader):
                batch = _to_device(batch, device)
                loss = model(**batch).loss
                if anchor:  # FedProx: stay near where the round started
                    loss = loss + config.proximal_mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(trainable, anchor))
                if not torch.isfinite(loss):
                    raise LoraXSError(f"training diverged (non-finite loss at step {step + 1}); try a lower --lr")
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                examples += batch["input_ids"].shape[0]
                total_loss += loss.item()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if after_epoch is not None and index == len(loader) - 1:  # a full pass done
                    if after_epoch(step):
                        steps = step  # early stop
                    model.train()
                if step >= steps:
                    break
    seconds = time.perf_counter() - start
    if not all(torch.isfinite(p).all() for p in trainable):
        raise LoraXSError(f"training diverged (non-finite weights after step {step}); try a lower --lr")
    model.eval()
    return TrainResult(loss=total_loss / steps, examples=examples, steps=steps, seconds=seconds)


@torch.inference_mode()
def evaluate(model: nn.Module, loader, device: torch.device | str = "cpu", progress: bool = False) -> EvalResult:
    """Mean loss and accuracy (classes, or next tokens for a causal LM) over `loader`."""
    model.to(device).eval()
    total_loss, correct, counted, examples = 0.0, 0, 0, 0
    for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        batch = _to_device(batch, device)
        out = model(**batch)
        n = batch["input_ids"].shape[0]
        total_loss += out.loss.item() * n
        examples += n
        labels = batch["labels"]
        if out.logits.dim() == 2:  # (B, num_labels): classification
            correct += (out.logits.argmax(-1) == labels).sum().item()
            counted += n
        else:  # (B, T, vocab): next-token prediction, labels shifted by one
            predicted = out.logits[:, :-1].argmax(-1)  # (B, T-1)
            target = labels[:, 1:]  # (B, T-1)
            mask = target != IGNORE_INDEX
            correct += (predicted[mask] == target[mask]).sum().item()
            counted += mask.sum().item()
    if examples == 0:
        raise LoraXSError("no evaluation examples")
    return EvalResult(loss=total_loss / examples, accuracy=correct / max(counted, 1), examples=examples)
