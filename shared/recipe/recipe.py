"""The small-folder recipe, numpy only; a `RecipeBackend` computes what needs the network.

train split -> fit + validation (stratified, seeded); every text tokenized once
max length  <- the 95th percentile of the fit texts' token counts (capped)
one pass    -> frozen features of fit + validation (+ test): the frozen-features baseline,
               the start's "before" score and the closed-form head start
start       <- the better on validation of the adapter as given and the same adapter with its
               head refitted in closed form (from scratch: R = 0 and the closed-form head)
train       -> R (of the backend's trainable layers) and, slowly, the head with AdamW over
               length-sorted buckets; after every epoch the head is refitted in closed form on
               the fit split's current features and scored on validation; early stopping
interpolate -> R_ref + lam (R_best - R_ref), lam chosen on validation (shared/interpolation.py)
never worse -> lam = 0 wins ties; chosen on loss, an epoch or a point must also keep the
               validation accuracy of what it replaces (`keep_accuracy`)
anytime     -> with a deadline, training stops while one more validation and the final passes
               still fit, and the best validated state so far is kept
joint       -> with `lexical_offsets` (a lexical part fit in closed form before training, e.g.
               shared/personal_parts.py:joint_lexical), its fixed logits are added to the head's
               in every loss, head fit and score above: R and the head learn around it. The fit
               split's offsets must come from models that did not see those texts (out of fold)
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from shared.errors import LoraXSError
from shared.interpolation import LAMBDA_GRID, choose_lambda, interpolate
from shared.recipe.adamw import AdamW, clip_by_global_norm, warmup_linear
from shared.recipe.backend import Params, RecipeBackend
from shared.recipe.config import PersonalTrainingConfig, epoch_budget
from shared.recipe.data import Examples, Tokenize, choose_max_length, make_batches, split_validation
from shared.recipe.head import Head, choose_head, example_losses, fit_head, logits

WARMUP_RATIO = 0.1
MAX_GRAD_NORM = 1.0
EVAL_BATCH = 64
EVAL_TOKENS = 2048


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float
    examples: int


@dataclass(frozen=True)
class TrainingSummary:
    loss: float  # mean training loss over the steps taken
    examples: int
    steps: int
    seconds: float


@dataclass
class SplitView:
    """One split as the kept adapter sees it: what its later parts (lexical, temperature) are fit
    and scored on without another pass of the network."""

    features: np.ndarray | None  # (N, H) pooled features of the kept adapter; None: not computed
    ids: list[np.ndarray]  # the token ids the encoder read (truncated, special tokens included)
    labels: np.ndarray  # (N,) int64


@dataclass
class LogitOffsets:
    """Fixed logits the head fits around (another part of the model): (N_fit, C), (N_val, C)."""

    fit: np.ndarray
    val: np.ndarray
    info: object = None  # what the part's source needs later (shared/personal_parts.py)


# (fit token ids, fit labels, val token ids, val labels, the start's (N_val, C) validation logits)
OffsetSource = Callable[[list, np.ndarray, list, np.ndarray, np.ndarray], LogitOffsets | None]


@dataclass
class RecipeResult:
    params: Params  # the adapter kept
    start: str  # what training started from
    start_score: float  # validation accuracy, or minus the loss (measure "loss")
    best_score: float
    improved: bool  # an epoch beat the start on validation
    history: list[float]  # validation score after every epoch
    best_epoch: int  # 0 = the start
    training: TrainingSummary
    max_length: int
    num_fit: int
    num_val: int
    frozen_head_score: float  # frozen features + logistic regression, validation accuracy
    frozen_params: Params = field(repr=False)  # R = 0 and that regression refitted on fit + validation
    lam: float = 1.0
    lam_scores: dict[float, float] = field(default_factory=dict)
    measure: str = "loss"
    start_accuracy: float | None = None
    kept_accuracy: float | None = None
    held_back: list[int] = field(default_factory=list)
    stopped_on_time: bool = False
    before: Evaluation | None = None  # on `test`: the start as given
    after: Evaluation | None = None  # on `test`: the kept adapter
    frozen_test: Evaluation | None = None  # on `test`: the frozen baseline
    seconds: dict[str, float] = field(default_factory=dict)  # where the time went
    kept: str = ""  # what the kept adapter is, in words the report uses (never contradicting `lam`)
    head_l2: float | None = None  # the kept head was refitted on fit + validation with this penalty
    views: dict[str, SplitView] = field(default_factory=dict, repr=False)  # "fit", "val" (, "test")
    offsets: LogitOffsets | None = field(default=None, repr=False)  # trained jointly with this part


class Clock:
    """Seconds used, per phase, and whether work of an estimated length still fits."""

    def __init__(self, deadline: float | None):
        self.deadline, self.spent = deadline, {}

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def add(self, phase: str, since: float) -> float:
        seconds = time.monotonic() - since
        self.spent[phase] = self.spent.get(phase, 0.0) + seconds
        return seconds


class Passes:
    """Features of example sets under params, by length-sorted batches."""

    def __init__(self, backend: RecipeBackend, examples: Examples, pad_id: int):
        self.backend, self.examples, self.pad_id = backend, examples, pad_id

    def features(self, indices: list[int], params: Params) -> np.ndarray:
        """(len(indices), H) in the order of `indices`."""
        out = None
        for rows in self._groups(indices):
            batch = make_batches(self.examples, [indices[k] for k in rows], len(rows), self.pad_id)[0]
            feats = self.backend.features(batch, params)  # (B, H), in the batch's order
            if out is None:
                out = np.zeros((len(indices), feats.shape[1]), dtype=np.float32)
            position = {int(i): b for b, i in enumerate(batch["example_index"])}
            out[rows] = feats[[position[indices[k]] for k in rows]]
        return out

    def _groups(self, indices: list[int]) -> list[list[int]]:
        """Positions in `indices`, by length, cut into batches of at most `EVAL_TOKENS` padded
        tokens (memory: attention grows with batch x length^2) and `EVAL_BATCH` texts."""
        order = sorted(range(len(indices)), key=lambda k: len(self.examples.ids[indices[k]]))
        groups, current = [], []
        for k in order:
            longest = len(self.examples.ids[indices[k]])  # sorted: the newest is the longest
            if current and (len(current) + 1) * longest > EVAL_TOKENS or len(current) == EVAL_BATCH:
                groups.append(current)
                current = []
            current.append(k)
        return groups + ([current] if current else [])

    def labels(self, indices: list[int]) -> np.ndarray:
        return self.examples.labels[np.asarray(indices, dtype=np.int64)]


def _evaluation(params: Params, features: np.ndarray, labels: np.ndarray, offset=None) -> Evaluation:
    z = logits(params["head_weight"], params["head_bias"], features)  # (N, C)
    z = z if offset is None else z + offset
    return Evaluation(
        loss=float(example_losses(z, labels).mean()),
        accuracy=float((z.argmax(1) == labels).mean()),
        examples=len(labels),
    )


def _score(evaluation: Evaluation, measure: str) -> float:
    return evaluation.accuracy if measure == "accuracy" else -evaluation.loss


def _with_head(params: Params, head: Head) -> Params:
    return {"lora_R": params["lora_R"], "head_weight": head.weight, "head_bias": head.bias}


def _copy(params: Params) -> Params:
    return {k: v.copy() for k, v in params.items()}


def run_recipe(
    backend: RecipeBackend,
    tokenize: Tokenize,
    pad_id: int,
    texts: list[str],
    labels: list[int],
    num_classes: int,
    start: Params,
    config: PersonalTrainingConfig,
    start_name: str = "scratch",
    test: tuple[list[str], list[int]] | None = None,
    progress: bool = False,
    deadline: float | None = None,
    length_limit: int | None = None,
    lexical_offsets: OffsetSource | None = None,
) -> RecipeResult:
    """The recipe above on `texts` / `labels` (the folder's training split) from `start`
    (from scratch: R = 0, any head). `test` is only reported on. `deadline`: time.monotonic().
    `lexical_offsets`: trains jointly with the part it returns (None from it: alone)."""
    clock, begun = Clock(deadline), time.monotonic()
    measure = config.select_on
    guarded = measure == "loss" and config.keep_accuracy
    fit, val = split_validation(list(labels), config.val_fraction, config.seed, stratify=True)
    max_length = choose_max_length([len(ids) for ids in tokenize([texts[i] for i in fit], None)], config, length_limit)
    all_texts = list(texts) + (list(test[0]) if test else [])
    all_labels = np.asarray(list(labels) + (list(test[1]) if test else []), dtype=np.int64)
    examples = Examples(tokenize(all_texts, max_length), all_labels)
    test_idx = list(range(len(texts), len(all_texts)))
    passes = Passes(backend, examples, pad_id)
    clock.add("tokenize", begun)

    # one pass of the frozen network: baseline, before, closed-form start
    since = time.monotonic()
    scratch = start_name == "scratch"
    start = _copy(start)
    if scratch:
        start["lora_R"][:] = 0.0
    frozen = {**_copy(start), "lora_R": np.zeros_like(start["lora_R"])}
    everything = fit + val + test_idx
    frozen_all = passes.features(everything, frozen)
    split_at = (len(fit), len(fit) + len(val))
    f_fit, f_val, f_test = np.split(frozen_all, split_at)
    given_all = frozen_all if scratch else passes.features(everything, start)
    g_fit, g_val, g_test = np.split(given_all, split_at)
    first_pass_seconds = clock.add("frozen pass", since)
    y_fit, y_val, y_test = passes.labels(fit), passes.labels(val), passes.labels(test_idx)

    frozen_head, frozen_score = choose_head((f_fit, y_fit), (f_val, y_val), num_classes)
    frozen_both = fit_head(np.vstack([f_fit, f_val]), np.r_[y_fit, y_val], num_classes, frozen_head.l2)
    frozen_params = _with_head(frozen, frozen_both)
    probe, probe_accuracy = choose_head((g_fit, y_fit), (g_val, y_val), num_classes)
    joint = None
    if lexical_offsets is not None:
        fit_ids, val_ids = [examples.ids[i] for i in fit], [examples.ids[i] for i in val]
        joint = lexical_offsets(fit_ids, y_fit, val_ids, y_val, logits(probe.weight, probe.bias, g_val))
    o_fit, o_val = (joint.fit, joint.val) if joint is not None else (None, None)
    if joint is not None:
        probe, probe_accuracy = choose_head((g_fit, y_fit), (g_val, y_val), num_classes, offsets=(o_fit, o_val))
    given_val = _evaluation(start, g_val, y_val, o_val)
    best, best_score, start_accuracy = start, _score(given_val, measure), given_val.accuracy
    best_features = (g_fit, g_val)
    probe_val = _evaluation(_with_head(start, probe), g_val, y_val, o_val)
    start_label, closed_form = start_name, False
    if _score(probe_val, measure) > best_score or scratch:
        best, best_score, start_accuracy = _with_head(start, probe), _score(probe_val, measure), probe_accuracy
        closed_form = config.refit_head
        start_label = f"{start_name} + closed-form head" if not scratch else "frozen features + closed-form head"
    reference = start if not scratch else best
    reference_features = best_features
    start_score = best_score
    clock.add("closed-form heads", since + first_pass_seconds)

    # training
    rng = np.random.default_rng(config.seed)
    num_batches = math.ceil(len(fit) / config.batch_size)
    total = math.ceil(epoch_budget(num_batches, config) * num_batches)
    head_lr = config.head_lr or (config.lr * config.head_lr_scale if closed_form else config.lr)
    params = _copy(best)
    optimizer = AdamW(params, {"lora_R": config.lr, "head_weight": head_lr, "head_bias": head_lr})
    masks = {"lora_R": np.asarray(backend.trainable_layers, dtype=np.float32)[:, None, None]}
    warmup = int(WARMUP_RATIO * total)
    tokens_all = examples.tokens(everything)
    val_cost = first_pass_seconds * examples.tokens(fit + val) / max(tokens_all, 1)  # until measured
    final_cost = first_pass_seconds * (examples.tokens(test_idx) + 3 * examples.tokens(val)) / max(tokens_all, 1)
    history, held_back, best_epoch, waited, progress_score = [], [], 0, 0, best_score
    train_offsets = None
    if joint is not None:  # by example index, as batches name their texts
        train_offsets = np.zeros((len(examples.labels), num_classes), dtype=np.float32)
        train_offsets[fit] = o_fit
    step, losses, seen, step_seconds, stopped_on_time, since_validation = 0, [], 0, [], False, 0

    def validate() -> None:
        nonlocal best, best_score, best_epoch, best_features, waited, progress_score, val_cost
        started = time.monotonic()
        if closed_form:
            now_fit, now_val = np.split(passes.features(fit + val, params), [len(fit)])
            state = _with_head(params, fit_head(now_fit, y_fit, num_classes, probe.l2, o_fit))
        else:
            now_fit, now_val, state = None, passes.features(val, params), _copy(params)
        result = _evaluation(state, now_val, y_val, o_val)
        score = _score(result, measure)
        history.append(score)
        if score > best_score and guarded and result.accuracy < start_accuracy:
            held_back.append(len(history))
        elif score > best_score:
            best, best_score, best_epoch, best_features = _copy(state), score, len(history), (now_fit, now_val)
        if score > progress_score:
            progress_score, waited = score, 0
        else:
            waited += 1
        val_cost = clock.add("validation", started)

    bar = tqdm(total=total, desc="personalize", disable=not progress, leave=False)
    training_started = time.monotonic()
    while step < total:
        for batch in make_batches(examples, fit, config.batch_size, pad_id, rng):
            step_cost = float(np.mean(step_seconds[-10:])) if step_seconds else val_cost / 4
            if clock.left() < step_cost + val_cost + final_cost:
                stopped_on_time = True
                break
            started = time.monotonic()
            offset = train_offsets[batch["example_index"]] if train_offsets is not None else None
            loss, grads = backend.loss_and_grads(batch, params, offset)
            if not math.isfinite(loss):
                raise LoraXSError(f"training diverged (non-finite loss at step {step + 1}); try a lower --lr")
            clip_by_global_norm(grads, MAX_GRAD_NORM)
            optimizer.step(params, grads, warmup_linear(step, warmup, total), masks)
            step, since_validation = step + 1, since_validation + 1
            losses.append(loss)
            seen += len(batch["labels"])
            step_seconds.append(clock.add("training steps", started))
            epochs_left = math.ceil((total - step) / num_batches)
            bar.update(1)
            bar.set_postfix(
                refresh=False,
                loss=f"{loss:.3f}",
                left=f"~{min(clock.left(), (total - step) * step_seconds[-1] + epochs_left * val_cost + final_cost):.0f}s",
            )
            if step >= total:
                break
        if stopped_on_time or step >= total or since_validation == 0:
            break
        since_validation = 0
        validate()
        if waited >= config.patience:
            break
    if since_validation and (not stopped_on_time or clock.left() > val_cost + final_cost / 2):
        validate()  # the last, partial or budget-cut epoch
    bar.close()
    if not all(np.isfinite(v).all() for v in params.values()):
        raise LoraXSError(f"training diverged (non-finite weights after step {step}); try a lower --lr")
    training = TrainingSummary(
        loss=float(np.mean(losses)) if losses else 0.0,
        examples=seen,
        steps=step,
        seconds=time.monotonic() - training_started,
    )

    # interpolation toward the best epoch, and the head refitted on fit + validation
    since = time.monotonic()
    lam, lam_scores, kept_features = (0.0 if best is reference else 1.0), {}, None
    kept_features = reference_features if best is reference else best_features
    if config.interpolate and best is not reference and clock.left() > final_cost:
        significance = config.significance if not scratch else 0.0
        per_example, accuracies, val_features = {}, {}, {0.0: reference_features[1], 1.0: best_features[1]}
        for candidate in LAMBDA_GRID:
            point = interpolate(reference, best, candidate)
            if candidate not in val_features:
                val_features[candidate] = passes.features(val, point)
            z = logits(point["head_weight"], point["head_bias"], val_features[candidate])  # (N, C)
            z = z if o_val is None else z + o_val
            correct = (z.argmax(1) == y_val).astype(float)
            per_example[candidate] = list(correct if measure == "accuracy" else -example_losses(z, y_val))
            accuracies[candidate] = float(correct.mean())
        allowed = {k: v for k, v in per_example.items() if not (guarded and accuracies[k] < accuracies[0.0])}
        lam = choose_lambda(allowed, significance)
        lam_scores = {k: sum(v) / len(v) for k, v in per_example.items()}
        kept_features = {0.0: reference_features, 1.0: best_features}.get(lam, (None, val_features[lam]))
    kept = interpolate(reference, best, lam) if 0.0 < lam < 1.0 else (best if lam == 1.0 else reference)
    kept = _copy(kept)
    kept_accuracy = _evaluation(kept, kept_features[1], y_val, o_val).accuracy
    head_l2 = probe.l2 if closed_form and not (lam == 0.0 and not scratch) else None
    kept_fit = kept_features[0]
    if head_l2 is not None:  # a given adapter kept as given keeps its head
        kept_fit = kept_fit if kept_fit is not None else passes.features(fit, kept)
        both_offsets = np.vstack([o_fit, o_val]) if joint is not None else None
        kept = _with_head(
            kept,
            fit_head(np.vstack([kept_fit, kept_features[1]]), np.r_[y_fit, y_val], num_classes, probe.l2, both_offsets),
        )
    clock.add("interpolation and refit", since)

    views = {
        "fit": SplitView(kept_fit, [examples.ids[i] for i in fit], y_fit),
        "val": SplitView(kept_features[1], [examples.ids[i] for i in val], y_val),
    }
    before = after = frozen_test = None
    if test:
        since = time.monotonic()
        before = _evaluation(start, g_test, y_test)
        frozen_test = _evaluation(frozen_params, f_test, y_test)
        same_r = [(frozen, f_test), (start, g_test)]
        known = next((feats for p, feats in same_r if np.array_equal(p["lora_R"], kept["lora_R"])), None)
        kept_test = known if known is not None else passes.features(test_idx, kept)
        after = _evaluation(kept, kept_test, y_test)
        views["test"] = SplitView(kept_test, [examples.ids[i] for i in test_idx], y_test)
        clock.add("test", since)
    return RecipeResult(
        params=kept,
        start=start_label,
        start_score=start_score,
        best_score=best_score,
        improved=best_epoch > 0,
        history=history,
        best_epoch=best_epoch,
        training=training,
        max_length=max_length,
        num_fit=len(fit),
        num_val=len(val),
        frozen_head_score=frozen_score,
        frozen_params=frozen_params,
        lam=lam,
        lam_scores=lam_scores,
        measure=measure,
        start_accuracy=start_accuracy,
        kept_accuracy=kept_accuracy,
        held_back=held_back,
        stopped_on_time=stopped_on_time,
        before=before,
        after=after,
        frozen_test=frozen_test,
        seconds=dict(clock.spent),
        kept=kept_words(lam, best_epoch, start_name, start_label),
        head_l2=head_l2,
        views=views,
        offsets=joint,
    )


def kept_words(lam: float, best_epoch: int, start: str, start_label: str) -> str:
    """lam = 0 is the reference: the adapter as given, or from scratch the start; lam = 1 the
    best state: an epoch, or the start when none beat it; else a point between."""
    reference = f"{start} itself" if start != "scratch" else f"the start ({start_label})"
    best = f"epoch {best_epoch}" if best_epoch else f"the start ({start_label})"
    if lam == 0.0:
        return reference
    return best if lam == 1.0 else f"lam {lam:g} of the way from {reference} to {best}"
