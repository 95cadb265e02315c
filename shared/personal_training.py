"""The training recipe for one user's small folder: the defaults `client.run` uses, and the
ClientApp's personalization with them.

    train split -> fit + validation (stratified, seeded)
    max length  <- the 95th percentile of the fit texts' token counts (capped)
    score       <- validation loss (mean cross-entropy; `select_on`), or accuracy: on a hundred
                   examples accuracy moves in steps of one example and mostly ties, while the
                   loss ranks two adapters by how sure they are of the right class
    start       <- the better on validation of: the adapter as given, and the same adapter with
                   its head refitted in closed form (logistic regression on its pooled features)
    train       -> R (and, slowly, the head) with AdamW, an epoch budget from the folder size,
                   validation after every epoch, early stopping, the best epoch kept; with a
                   closed-form head, an epoch is scored with the head refitted on the fit
                   split's current features (the head it would end with)
    interpolate -> the point R_ref + lam (R_best - R_ref) on the line from the reference (the
                   adapter as given, or from scratch the closed-form start) to the best epoch,
                   lam chosen on validation (shared/interpolation.py); from a given adapter a
                   lam > 0 must beat it by `significance` standard errors
    never worse -> lam = 0 wins ties: the reference is what is kept when nothing beats it;
                   chosen on loss, an epoch or a point must also keep the validation accuracy
                   of what it replaces (`keep_accuracy`): a lower loss with one more wrong
                   example is a trade a user did not ask for

No Flower, no files: the callers load data and write adapters.
"""

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from shared.data.batches import DEFAULT_BATCH_SIZE, EVAL_BATCH_SIZE, make_loader
from shared.errors import LoraXSError
from shared.data.batches import IGNORE_INDEX
from shared.interpolation import LAMBDA_GRID, choose_lambda, interpolate
from shared.linear_probe import (
    LinearHead, accuracy, fit_linear_head, head_inputs, linear_head, log_loss, refit, refit_on_both, set_head,
)
from shared.loraxs.model import adapted_layers, adapter_state, load_adapter_state
from shared.training import EvalResult, TrainConfig, TrainResult, evaluate, train

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
    refit_head: after choosing the epoch, refit the head in closed form on fit + validation.
    select_on: "loss" or "accuracy": the validation score that picks the start, the epoch and
    the interpolation point (seq-cls; causal-lm is always scored by its loss); the closed-form
    head's penalty is chosen on accuracy (on loss it lost 4 points on a tuning folder: the
    stronger penalty it picks calibrates the head but blurs its argmax). keep_accuracy: with
    select_on "loss", an epoch is kept only if its validation accuracy is at least the start's,
    an interpolation point only if at least the reference's."""

    lr: float = 5e-3
    head_lr: float | None = None
    head_lr_scale: float = 0.1
    batch_size: int = DEFAULT_BATCH_SIZE
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


@dataclass
class PersonalTrainingResult:
    start: str  # what training started from
    start_score: float  # validation accuracy (seq-cls) or minus the loss (causal-lm)
    best_score: float
    improved: bool  # an epoch beat the start on validation
    history: list[float]  # validation score after every epoch
    best_epoch: int  # 0 = the start
    training: TrainResult | None
    max_length: int
    num_fit: int
    num_val: int
    frozen_head_score: float | None  # frozen base features + logistic regression, on validation
    frozen_head_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    lam: float = 1.0  # where on the line reference -> best epoch the kept adapter lies
    lam_scores: dict[float, float] = field(default_factory=dict)  # lam -> validation score
    measure: str = "accuracy"  # what the scores are: "accuracy", or "loss" (scores are minus the loss)
    start_accuracy: float | None = None  # validation accuracy of the start and of the kept adapter
    kept_accuracy: float | None = None  # (seq-cls; the kept one before its head is refitted on validation)
    held_back: list[int] = field(default_factory=list)  # epochs with a better score but a lower accuracy
    head_l2: float | None = None  # the kept head was refitted on fit + validation with this penalty


def choose_max_length(texts: list[str], tokenizer, config: PersonalTrainingConfig, model: nn.Module | None = None) -> int:
    """`config.max_length`, else the `LENGTH_PERCENTILE` of the texts' token counts (rounded up
    to 8, in [min_length, length_cap]); never above what the tokenizer and model accept."""
    limit = model_length_limit(tokenizer, model)
    if config.max_length is not None:
        return min(config.max_length, limit) if limit else config.max_length
    counts = [len(ids) for ids in tokenizer(list(texts), truncation=False)["input_ids"]]
    length = int(math.ceil(np.percentile(counts, LENGTH_PERCENTILE) / 8) * 8) if counts else config.min_length
    limit = min(config.length_cap, limit or config.length_cap)
    return max(min(length, limit), min(config.min_length, limit))


def model_length_limit(tokenizer, model: nn.Module | None = None) -> int | None:
    limits = [getattr(tokenizer, "model_max_length", None),
              getattr(getattr(model, "config", None), "max_position_embeddings", None)]
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(limits) if limits else None


def split_validation(train: Dataset, fraction: float, seed: int, stratify: bool) -> tuple[Dataset, Dataset]:
    """(fit, validation): `fraction` of every class (at least one example of a class with two
    or more), seeded."""
    rng = np.random.default_rng(seed)
    n = len(train)
    if n < MIN_EXAMPLES:
        raise LoraXSError(f"{n} training examples are too few to hold some out for validation "
                          f"(need {MIN_EXAMPLES})")
    groups = {}
    keys = train["label"] if stratify else [0] * n
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    val = []
    for indices in groups.values():
        take = int(round(fraction * len(indices)))
        take = max(take, 1) if len(indices) >= 2 else 0
        val += list(rng.permutation(indices)[:take])
    val_set = set(int(i) for i in val)
    fit = [i for i in range(n) if i not in val_set]
    return train.select(fit), train.select(sorted(val_set))


def epoch_budget(num_batches: int, config: PersonalTrainingConfig) -> float:
    if config.epochs is not None:
        return config.epochs
    return float(min(config.max_epochs, max(config.min_epochs, math.ceil(config.step_budget / num_batches))))


def result_score(result: EvalResult, measure: str) -> float:
    """Higher is better: accuracy, or minus the mean loss (`measure` "loss")."""
    return result.accuracy if measure == "accuracy" else -result.loss


def validation_score(model: nn.Module, loader, device, measure: str) -> float:
    """`result_score` of the model on `loader`."""
    return result_score(evaluate(model, loader, device), measure)


def _head_score(head: LinearHead, features: tuple[torch.Tensor, torch.Tensor], measure: str) -> float:
    return accuracy(head.weight, head.bias, *features) if measure == "accuracy" else -log_loss(
        head.weight, head.bias, *features)


def example_scores(model: nn.Module, loader, device, task: str, measure: str = "accuracy") -> list[float]:
    """One score per example (higher is better): 1.0 / 0.0 for a right / wrong class, or minus
    its cross-entropy (seq-cls, measure "loss"), or minus the example's mean next-token loss
    (causal-lm)."""
    return example_outcomes(model, loader, device, task)[measure if task == "seq-cls" else "loss"]


@torch.no_grad()
def example_outcomes(model: nn.Module, loader, device, task: str) -> dict[str, list[float]]:
    """Per-example scores of one pass (higher is better): "loss" (minus the example's
    cross-entropy, or its mean next-token loss for causal-lm) and, for seq-cls, "accuracy"
    (1.0 / 0.0 for a right / wrong class)."""
    model.to(device).eval()
    out: dict[str, list[float]] = {"loss": []} | ({"accuracy": []} if task == "seq-cls" else {})
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits, labels = model(**batch).logits, batch["labels"]
        if task == "seq-cls":
            out["accuracy"] += (logits.argmax(-1) == labels).float().tolist()
            out["loss"] += (-nn.functional.cross_entropy(logits.float(), labels, reduction="none")).tolist()
            continue
        target = labels[:, 1:]  # (B, T-1)
        losses = nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(), target,
                                             ignore_index=IGNORE_INDEX, reduction="none")  # (B, T-1)
        mask = (target != IGNORE_INDEX).float()
        out["loss"] += (-(losses * mask).sum(1) / mask.sum(1).clamp(min=1.0)).tolist()
    return out


def _zeroed_adapters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Set every R to zero (the frozen base model); returns the state to restore."""
    saved = copy.deepcopy(adapter_state(model))
    with torch.no_grad():
        for layer in adapted_layers(model).values():
            layer.lora_R.zero_()
    return saved


def _state_with_head(model: nn.Module, head: LinearHead) -> dict[str, torch.Tensor]:
    """The model's adapter state with `head` in place of its own (the model is left as it was)."""
    own = linear_head(model)
    kept = LinearHead(own.weight.detach().clone(), own.bias.detach().clone(), head.l2)
    set_head(model, head)
    state = copy.deepcopy(adapter_state(model))
    set_head(model, kept)
    return state


def personal_training(
    model: nn.Module, train_set: Dataset, tokenizer, task: str, config: PersonalTrainingConfig,
    device: torch.device | str = "cpu", start: str = "scratch", progress: bool = False,
) -> PersonalTrainingResult:
    """Train `model` (LoRA-XS injected, start adapter loaded) on `train_set` by the recipe above;
    the model ends holding the chosen adapter state."""
    seq_cls = task == "seq-cls"
    measure = config.select_on if seq_cls else "loss"
    guarded = seq_cls and measure == "loss" and config.keep_accuracy  # loss chooses, accuracy must hold
    fit, val = split_validation(train_set, config.val_fraction, config.seed, stratify=seq_cls)
    max_length = choose_max_length(fit["text"], tokenizer, config, model)
    loader = lambda ds, shuffle=False: make_loader(  # noqa: E731
        ds, tokenizer, task, config.batch_size if shuffle else EVAL_BATCH_SIZE, max_length,
        shuffle=shuffle, seed=config.seed)
    fit_eval, val_loader = loader(fit), loader(val)
    head = linear_head(model) if seq_cls else None
    num_classes = head.out_features if head is not None else 0

    given = copy.deepcopy(adapter_state(model))
    given_result = evaluate(model, val_loader, device)  # one pass: the start's score and its accuracy
    best_state, best_score = given, result_score(given_result, measure)
    start_accuracy = given_result.accuracy if seq_cls else None
    start_name, probe_l2, frozen_score, frozen_state = start, None, None, None
    if head is not None:
        # the frozen base model's features + logistic regression: the baseline, and a start
        saved = _zeroed_adapters(model)
        fit_features, val_features = head_inputs(model, fit_eval, device), head_inputs(model, val_loader, device)
        frozen_head, frozen_score = fit_linear_head(fit_features, val_features, num_classes)
        if config.refit_head:  # as the personal head will be: on fit + validation
            frozen_head = refit_on_both(fit_features, val_features, num_classes, frozen_head.l2)
        set_head(model, frozen_head)
        frozen_state = copy.deepcopy(adapter_state(model))
        load_adapter_state(model, saved)
        # the start adapter's own features + logistic regression
        probe_val = head_inputs(model, val_loader, device)
        probe, probe_accuracy = fit_linear_head(head_inputs(model, fit_eval, device), probe_val, num_classes)
        probe_score = _head_score(probe, probe_val, measure)
        if probe_score > best_score or start == "scratch":
            set_head(model, probe)
            best_state, best_score, probe_l2 = copy.deepcopy(adapter_state(model)), probe_score, probe.l2
            start_accuracy = probe_accuracy
            start_name = f"{start} + closed-form head" if start != "scratch" else "frozen features + closed-form head"
    closed_form = config.refit_head and probe_l2 is not None
    reference = given if start != "scratch" else best_state
    start_score = best_score
    history: list[float] = []
    best_epoch, waited, progress_score, held_back = 0, 0, best_score, []

    def scored_state() -> tuple[float, float | None, dict[str, torch.Tensor] | None]:
        """This epoch's validation score, its validation accuracy (seq-cls) and, with a
        closed-form head, the state with the head refitted on the fit split's current features
        (None: the model's own state)."""
        if not closed_form:
            result = evaluate(model, val_loader, device)
            return result_score(result, measure), result.accuracy if seq_cls else None, None
        fit_now, val_now = head_inputs(model, fit_eval, device), head_inputs(model, val_loader, device)
        refitted = refit(*fit_now, num_classes, probe_l2)
        return (_head_score(refitted, val_now, measure), accuracy(refitted.weight, refitted.bias, *val_now),
                _state_with_head(model, refitted))

    def after_epoch(_step: int) -> bool:
        """Keep the epoch if it beats the best kept one (and, guarded, holds the start's
        accuracy); stop after `patience` epochs without a better score of any epoch."""
        nonlocal best_state, best_score, best_epoch, waited, progress_score
        score, epoch_accuracy, state = scored_state()
        history.append(score)
        if score > best_score and guarded and epoch_accuracy < start_accuracy:
            held_back.append(len(history))
        elif score > best_score:
            best_state = state if state is not None else copy.deepcopy(adapter_state(model))
            best_score, best_epoch = score, len(history)
        if score > progress_score:
            progress_score, waited = score, 0
        else:
            waited += 1
        return waited >= config.patience

    train_loader = loader(fit, shuffle=True)
    head_lr = config.head_lr or (config.lr * config.head_lr_scale if probe_l2 is not None else config.lr)
    train_config = TrainConfig(epochs=epoch_budget(len(train_loader), config), lr=config.lr, head_lr=head_lr)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # dropout
        training = train(model, train_loader, train_config, device, progress=progress,
                         desc="personalize", after_epoch=after_epoch)

    lam, lam_scores = (0.0 if best_state is reference else 1.0), {}
    if config.interpolate and best_state is not reference:
        significance = config.significance if start != "scratch" else 0.0
        per_example, accuracies = {}, {}
        for candidate in LAMBDA_GRID:
            load_adapter_state(model, interpolate(reference, best_state, candidate))
            outcomes = example_outcomes(model, val_loader, device, task)
            per_example[candidate] = outcomes[measure]
            accuracies[candidate] = float(np.mean(outcomes["accuracy"])) if seq_cls else 0.0
        allowed = {k: v for k, v in per_example.items()  # the reference (lam = 0) is always allowed
                   if not (guarded and accuracies[k] < accuracies[0.0])}
        lam = choose_lambda(allowed, significance)
        lam_scores = {k: sum(v) / len(v) for k, v in per_example.items()}
    load_adapter_state(model, interpolate(reference, best_state, lam) if lam < 1.0 else best_state)
    kept_accuracy = evaluate(model, val_loader, device).accuracy if seq_cls else None
    head_refitted = closed_form and not (lam == 0.0 and start != "scratch")  # a given adapter kept as given
    if head_refitted:
        set_head(model, refit_on_both(head_inputs(model, fit_eval, device), head_inputs(model, val_loader, device),
                                      num_classes, probe_l2))
    return PersonalTrainingResult(
        start=start_name, start_score=start_score, best_score=best_score, improved=best_epoch > 0,
        history=history, best_epoch=best_epoch, training=training, max_length=max_length,
        num_fit=len(fit), num_val=len(val), frozen_head_score=frozen_score, frozen_head_state=frozen_state,
        lam=lam, lam_scores=lam_scores, measure=measure, start_accuracy=start_accuracy, kept_accuracy=kept_accuracy,
        held_back=held_back, head_l2=probe_l2 if head_refitted else None,
    )
