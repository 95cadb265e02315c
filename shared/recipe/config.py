"""The recipe's settings: the defaults `client.run` uses (no torch: the device runtime reads them)."""

import math
from dataclasses import dataclass

from shared.errors import LoraXSError

LENGTH_PERCENTILE = 95
MIN_EXAMPLES = 4  # the fewest training examples that leave some for validation
SELECT_ON = ("loss", "accuracy")


@dataclass(frozen=True)
class PersonalTrainingConfig:
    """lr: AdamW on the r x r matrices. head_lr: None = lr x `head_lr_scale` when the head starts
    from the closed-form fit (a good head moved fast is undone in one epoch), else lr.
    max_length: None = from the folder (`LENGTH_PERCENTILE` of token counts, in
    [min_length, length_cap]). epochs: None = `step_budget` optimizer steps, as whole epochs in
    [min_epochs, max_epochs]. patience: epochs without a better validation score before stopping.
    refit_head: score every epoch with the head refitted in closed form on the fit split, and
    refit the kept one on fit + validation. select_on: "loss" or "accuracy": the validation score
    that picks the start, the epoch and the interpolation point (seq-cls; causal-lm is scored by
    its loss); the closed-form head's penalty is chosen on accuracy. keep_accuracy: with select_on
    "loss", an epoch is kept only if its validation accuracy is at least the start's, an
    interpolation point only if at least the reference's. train_blocks: the top transformer blocks
    whose R train (None = all); the hidden states entering them are computed once per text.
    bf16: bfloat16 matmuls in the passes without gradients where the hardware has them.
    time_budget: seconds for the whole run (None = no limit): the best validated state so far
    is kept when it runs out. joint_lexical: choose the lexical part before training and train
    R and the head around it (shared/personal_parts.py: joint_lexical); else it is chosen after."""

    lr: float = 5e-3
    head_lr: float | None = None
    head_lr_scale: float = 0.1
    batch_size: int = 16
    max_length: int | None = None
    min_length: int = 32
    length_cap: int = 256
    epochs: float | None = None
    step_budget: int = 400
    min_epochs: int = 3
    max_epochs: int = 10
    val_fraction: float = 0.2
    patience: int = 2
    refit_head: bool = True
    interpolate: bool = True
    significance: float = 1.0
    select_on: str = "loss"
    keep_accuracy: bool = True
    train_blocks: int | None = 2
    bf16: bool = True
    time_budget: float | None = None
    joint_lexical: bool = False
    seed: int = 0

    def __post_init__(self):
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise LoraXSError(f"--lr must be a positive finite number, got {self.lr}")
        if self.head_lr is not None and not (math.isfinite(self.head_lr) and self.head_lr > 0):
            raise LoraXSError(f"--head-lr must be a positive finite number, got {self.head_lr}")
        if self.epochs is not None and not (math.isfinite(self.epochs) and 0 < self.epochs <= 1000):
            raise LoraXSError(f"--epochs must be in (0, 1000], got {self.epochs}")
        if self.max_length is not None and self.max_length < 2:
            raise LoraXSError(f"--max-length must be at least 2, got {self.max_length}")
        if self.batch_size < 1:
            raise LoraXSError(f"--batch-size must be positive, got {self.batch_size}")
        if not 0 < self.val_fraction < 0.5:
            raise LoraXSError(f"--val-fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.patience < 1:
            raise LoraXSError(f"--patience must be at least 1, got {self.patience}")
        if self.select_on not in SELECT_ON:
            raise LoraXSError(f"select-on must be one of {', '.join(SELECT_ON)}, got {self.select_on!r}")
        if not (math.isfinite(self.significance) and self.significance >= 0):
            raise LoraXSError(f"significance must be a finite number >= 0, got {self.significance}")
        if self.train_blocks is not None and self.train_blocks < 1:
            raise LoraXSError(f"--train-blocks must be at least 1, got {self.train_blocks}")
        if self.time_budget is not None and not (math.isfinite(self.time_budget) and self.time_budget > 0):
            raise LoraXSError(f"--time-budget must be a positive number of seconds, got {self.time_budget}")


def epoch_budget(num_batches: int, config: PersonalTrainingConfig) -> float:
    if config.epochs is not None:
        return config.epochs
    return float(min(config.max_epochs, max(config.min_epochs, math.ceil(config.step_budget / num_batches))))
