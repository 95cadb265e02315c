"""Personalization of one user's small folder on the PyTorch path: the driver of the numpy recipe
(shared/recipe/recipe.py, docs/recipe.md) for classifiers with one linear head over pooled
features, and the whole-model loop for everything else (causal-lm, two-layer heads):

    train split -> fit + validation (stratified, seeded)
    max length  <- the 95th percentile of the fit texts' token counts (capped)
    score       <- validation loss (mean cross-entropy; `select_on`), or accuracy
    train       -> every R (and the head) with AdamW, validation after every epoch, early
                   stopping, the best epoch kept
    interpolate -> R_given + lam (R_best - R_given), lam chosen on validation
    never worse -> lam = 0 wins ties; chosen on loss, an epoch or a point must also keep the
                   validation accuracy of what it replaces (`keep_accuracy`)

No Flower, no files: the callers load data and write adapters.
"""

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from shared.data.batches import EVAL_BATCH_SIZE, IGNORE_INDEX, make_loader
from shared.errors import LoraXSError
from shared.interpolation import LAMBDA_GRID, choose_lambda, interpolate
from shared.linear_probe import linear_head
from shared.loraxs.model import adapter_state, load_adapter_state
from shared.personal_parts import joint_lexical
from shared.recipe.config import LENGTH_PERCENTILE, MIN_EXAMPLES, PersonalTrainingConfig, epoch_budget  # noqa: F401 (re-exported)
from shared.recipe.data import Tokenize
from shared.recipe.data import choose_max_length as recipe_max_length
from shared.recipe.data import split_validation as recipe_split
from shared.recipe.recipe import RecipeResult, kept_words, run_recipe
from shared.recipe.torch_backend import TorchBackend, load_params, params_from_model
from shared.training import EvalResult, TrainConfig, TrainResult, evaluate, train


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
    kept: str = ""  # what the kept adapter is, in words the report uses (never contradicting `lam`)


def choose_max_length(
    texts: list[str], tokenizer, config: PersonalTrainingConfig, model: nn.Module | None = None
) -> int:
    """The recipe's token length (shared/recipe/data.py) for `texts` under this tokenizer and model."""
    counts = (
        [len(ids) for ids in tokenizer(list(texts), truncation=False)["input_ids"]] if config.max_length is None else []
    )
    return recipe_max_length(counts, config, model_length_limit(tokenizer, model))


def model_length_limit(tokenizer, model: nn.Module | None = None) -> int | None:
    limits = [
        getattr(tokenizer, "model_max_length", None),
        getattr(getattr(model, "config", None), "max_position_embeddings", None),
    ]
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(limits) if limits else None


def split_validation(train: Dataset, fraction: float, seed: int, stratify: bool) -> tuple[Dataset, Dataset]:
    """(fit, validation) datasets of the recipe's split (shared/recipe/data.py)."""
    fit, val = recipe_split(list(train["label"]) if stratify else [0] * len(train), fraction, seed, stratify)
    return train.select(fit), train.select(val)


def result_score(result: EvalResult, measure: str) -> float:
    """Higher is better: accuracy, or minus the mean loss (`measure` "loss")."""
    return result.accuracy if measure == "accuracy" else -result.loss


def validation_score(model: nn.Module, loader, device, measure: str) -> float:
    """`result_score` of the model on `loader`."""
    return result_score(evaluate(model, loader, device), measure)


@torch.inference_mode()
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
        losses = nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2).float(), target, ignore_index=IGNORE_INDEX, reduction="none"
        )  # (B, T-1)
        mask = (target != IGNORE_INDEX).float()
        out["loss"] += (-(losses * mask).sum(1) / mask.sum(1).clamp(min=1.0)).tolist()
    return out


def hf_tokenize(tokenizer) -> Tokenize:
    """A Hugging Face tokenizer as the recipe's `Tokenize`."""

    def tokenize(texts: list[str], max_length: int | None) -> list[np.ndarray]:
        encoded = tokenizer(list(texts), truncation=max_length is not None, max_length=max_length)
        return [np.asarray(ids, dtype=np.int64) for ids in encoded["input_ids"]]

    return tokenize


def personal_training(
    model: nn.Module,
    train_set: Dataset,
    tokenizer,
    task: str,
    config: PersonalTrainingConfig,
    device: torch.device | str = "cpu",
    start: str = "scratch",
    progress: bool = False,
    test_set: Dataset | None = None,
    deadline: float | None = None,
) -> PersonalTrainingResult | RecipeResult:
    """Train `model` (LoRA-XS injected, start adapter loaded) on `train_set`; the model ends
    holding the chosen adapter state. A classifier with one linear head over pooled features
    runs the numpy recipe (shared/recipe/recipe.py) on the PyTorch backend; `test_set` is only
    reported on, `deadline` a time.monotonic() value. Other models (causal-lm, two-layer heads)
    run the loop below over the whole model, without a deadline."""
    if task == "seq-cls" and linear_head(model) is not None:
        return _recipe_on_model(model, train_set, tokenizer, config, device, start, progress, test_set, deadline)
    return _whole_model_loop(model, train_set, tokenizer, task, config, device, start, progress)


def _recipe_on_model(
    model: nn.Module,
    train_set: Dataset,
    tokenizer,
    config: PersonalTrainingConfig,
    device,
    start: str,
    progress: bool,
    test_set: Dataset | None,
    deadline: float | None,
) -> RecipeResult:
    backend = TorchBackend(model, config.train_blocks, device, bf16=config.bf16)
    if tokenizer.pad_token_id is None:
        raise LoraXSError("the tokenizer has no pad token")
    test = (list(test_set["text"]), [int(y) for y in test_set["label"]]) if test_set is not None else None
    result = run_recipe(
        backend,
        hf_tokenize(tokenizer),
        tokenizer.pad_token_id,
        list(train_set["text"]),
        [int(y) for y in train_set["label"]],
        linear_head(model).out_features,
        params_from_model(model),
        config,
        start_name=start,
        test=test,
        progress=progress,
        deadline=deadline,
        length_limit=model_length_limit(tokenizer, model),
        lexical_offsets=joint_lexical(set(tokenizer.all_special_ids)) if config.joint_lexical else None,
    )
    load_params(model, result.params)
    return result


def _whole_model_loop(
    model: nn.Module,
    train_set: Dataset,
    tokenizer,
    task: str,
    config: PersonalTrainingConfig,
    device: torch.device | str = "cpu",
    start: str = "scratch",
    progress: bool = False,
) -> PersonalTrainingResult:
    seq_cls = task == "seq-cls"
    measure = config.select_on if seq_cls else "loss"
    guarded = seq_cls and measure == "loss" and config.keep_accuracy  # loss chooses, accuracy must hold
    fit, val = split_validation(train_set, config.val_fraction, config.seed, stratify=seq_cls)
    max_length = choose_max_length(fit["text"], tokenizer, config, model)
    loader = lambda ds, shuffle=False: make_loader(
        ds,
        tokenizer,
        task,
        config.batch_size if shuffle else EVAL_BATCH_SIZE,
        max_length,
        shuffle=shuffle,
        seed=config.seed,
    )
    val_loader = loader(val)
    given = copy.deepcopy(adapter_state(model))
    given_result = evaluate(model, val_loader, device)  # one pass: the start's score and its accuracy
    best_state, best_score = given, result_score(given_result, measure)
    start_accuracy = given_result.accuracy if seq_cls else None
    reference = given
    start_score = best_score
    history: list[float] = []
    best_epoch, waited, progress_score, held_back = 0, 0, best_score, []

    def after_epoch(_step: int) -> bool:
        """Keep the epoch if it beats the best kept one (and, guarded, holds the start's
        accuracy); stop after `patience` epochs without a better score of any epoch."""
        nonlocal best_state, best_score, best_epoch, waited, progress_score
        result = evaluate(model, val_loader, device)
        score, epoch_accuracy = result_score(result, measure), result.accuracy if seq_cls else None
        history.append(score)
        if score > best_score and guarded and epoch_accuracy < start_accuracy:
            held_back.append(len(history))
        elif score > best_score:
            best_state = copy.deepcopy(adapter_state(model))
            best_score, best_epoch = score, len(history)
        if score > progress_score:
            progress_score, waited = score, 0
        else:
            waited += 1
        return waited >= config.patience

    train_loader = loader(fit, shuffle=True)
    train_config = TrainConfig(
        epochs=epoch_budget(len(train_loader), config), lr=config.lr, head_lr=config.head_lr or config.lr
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # dropout
        training = train(
            model, train_loader, train_config, device, progress=progress, desc="personalize", after_epoch=after_epoch
        )

    lam, lam_scores = (0.0 if best_state is reference else 1.0), {}
    if config.interpolate and best_state is not reference:
        significance = config.significance if start != "scratch" else 0.0
        per_example, accuracies = {}, {}
        for candidate in LAMBDA_GRID:
            load_adapter_state(model, interpolate(reference, best_state, candidate))
            outcomes = example_outcomes(model, val_loader, device, task)
            per_example[candidate] = outcomes[measure]
            accuracies[candidate] = float(np.mean(outcomes["accuracy"])) if seq_cls else 0.0
        allowed = {
            k: v
            for k, v in per_example.items()  # the reference (lam = 0) is always allowed
            if not (guarded and accuracies[k] < accuracies[0.0])
        }
        lam = choose_lambda(allowed, significance)
        lam_scores = {k: sum(v) / len(v) for k, v in per_example.items()}
    load_adapter_state(model, interpolate(reference, best_state, lam) if lam < 1.0 else best_state)
    kept_accuracy = evaluate(model, val_loader, device).accuracy if seq_cls else None
    return PersonalTrainingResult(
        start=start,
        start_score=start_score,
        best_score=best_score,
        improved=best_epoch > 0,
        history=history,
        best_epoch=best_epoch,
        training=training,
        max_length=max_length,
        num_fit=len(fit),
        num_val=len(val),
        frozen_head_score=None,
        frozen_head_state=None,
        lam=lam,
        lam_scores=lam_scores,
        measure=measure,
        start_accuracy=start_accuracy,
        kept_accuracy=kept_accuracy,
        held_back=held_back,
        kept=kept_words(lam, best_epoch, start, start),
    )
