"""After the encoder is trained: whether to add the lexical part, and the temperature, chosen on
validation from what the recipe already computed (its `SplitView`s: the kept adapter's features
and the token ids of every split). Numpy only, and no pass of the network: the PyTorch and the
onnxruntime paths share it.

    encoder   <- the kept adapter; its head refitted on the fit split alone, so that the
                 validation split is held out from every part scored on it
    lexical   <- logistic regression on idf-weighted wordpieces and wordpiece pairs of the fit
                 split (shared/lexical.py), by the recipe's closed-form head (shared/recipe/head.py),
                 penalty chosen on validation accuracy
    pool      <- each part calibrated on validation by its own temperature (T_e, T_l), then
                 pooled: logits = (1 - w) encoder / T_e + w lexical / T_l, w the lexical part's
                 share in MIX_GRID; each w scored by its validation loss at its own best
                 temperature; w > 0 is kept only when that loss is lower and the validation
                 accuracy at least w = 0's (w = 0, the encoder alone, wins ties: the lexical part
                 never makes the start worse on validation). Pooling calibrated parts lets a
                 lexical part dominate an over-confident encoder (whose logits may be 20x too large)
    temperature <- T_f fit on the validation logits of the chosen pool (shared/calibration.py);
                 kept only when it lowers their loss by more than TEMPERATURE_SIGNIFICANCE standard
                 errors of the paired per-example differences (else T = 1: noise on ~100 texts)
    final     -> the lexical part refitted on fit + validation (same penalty); the encoder's own
                 head is the recipe's (already refitted on fit + validation). Stored as the file
                 format's (encoder + a lexical) / T: a = w T_e / ((1 - w) T_l), T = T_e T_f / (1 - w)

Joint (`joint_lexical`, PersonalTrainingConfig.joint_lexical): the lexical part and w are chosen the
same way before training, on the start's validation logits, and the recipe trains R and the head
around a * lexical (its `lexical_offsets`; the fit split's lexical logits out of fold, from
`FOLDS` heads that did not see them). After training only the temperature is left to choose.
"""

from dataclasses import dataclass, field

import numpy as np

from shared.calibration import expected_calibration_error, fit_temperature, nll, sampling_floor
from shared.interpolation import paired_gain
from shared.lexical import LexicalHead, accuracy, features, fit_vocabulary
from shared.output_parts import OutputParts, lexical_part, parts_meta
from shared.recipe.head import choose_head, example_losses, fit_head
from shared.recipe.recipe import LogitOffsets, SplitView

TEMPERATURE_SIGNIFICANCE = 1.0  # as the recipe's interpolation (shared/recipe/config.py: significance)
FOLDS = 5  # out-of-fold lexical logits of the fit split, for joint training
MIX_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # w = 1 (the lexical part alone) has no stored T


@dataclass
class PartsChoice:
    parts: OutputParts
    mix: float  # w: the lexical part's share of the pooled calibrated logits (0 = none)
    lexical_l2: float | None
    vocabulary: int  # terms (wordpieces and pairs) with a weight (k)
    scores: dict[float, tuple[float, float]] = field(default_factory=dict)  # w -> (val accuracy, calibrated val loss)
    val_nll: tuple[float, float] = (0.0, 0.0)  # the chosen mix's validation loss before / after the temperature
    val_ece: tuple[float, float] = (0.0, 0.0)
    lexical_only_accuracy: float = 0.0  # the lexical head alone on validation
    lexical_tried: bool = True  # False: --no-lexical
    joint: bool = False  # the encoder was trained around the lexical part


@dataclass(frozen=True)
class LexicalPool:
    """The lexical part fit on the fit split and its share w of the pool with an encoder's logits."""

    l2: float | None  # the lexical head's penalty (None: no lexical part)
    mix: float  # w
    scale: float  # a = w T_e / ((1 - w) T_l)
    scores: dict[float, tuple[float, float]]
    val_logits: np.ndarray  # (N_val, C) lexical logits of the head fit on the fit split
    only: float  # the lexical head alone: validation accuracy
    t_encoder: float = 1.0  # T_e
    t_pool: float = 1.0  # T_f: the best temperature of the chosen w's pooled logits


@dataclass(frozen=True)
class HeldOut:
    """The personal model on the test split: its accuracy, and its calibration without / with T."""

    accuracy: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    temperature: float
    examples: int
    ece_floor: float  # what a perfectly calibrated model with these confidences would show here


def pool_lexical(fit, val, encoder_val: np.ndarray, special_ids: set[int], num_classes: int) -> LexicalPool:
    """The lexical head on `fit` (token ids, labels), and w chosen on `val` with the encoder's
    validation logits `encoder_val` (N_val, C): MIX_GRID, each w at its best temperature."""
    lexical_val, l2, only = np.zeros_like(encoder_val), None, 0.0
    ids, idf = fit_vocabulary(fit.ids, special_ids)
    if len(ids):  # else no term in two fit texts: nothing to weigh
        x_fit, x_val = features(fit.ids, ids, idf), features(val.ids, ids, idf)
        lexical_head, only = choose_head((x_fit, fit.labels), (x_val, val.labels), num_classes)
        l2, lexical_val = lexical_head.l2, x_val @ lexical_head.weight.T + lexical_head.bias  # (N_val, C)
    t_encoder = fit_temperature(encoder_val, val.labels)
    t_lexical = fit_temperature(lexical_val, val.labels) if len(ids) else 1.0
    pooled = lambda w: (1 - w) * encoder_val / t_encoder + w * lexical_val / t_lexical  # (N_val, C)
    scores, t_pool = {}, {}
    for w in MIX_GRID if len(ids) else (0.0,):
        z = pooled(w)
        t_pool[w] = fit_temperature(z, val.labels)
        scores[w] = (accuracy(z, val.labels), nll(z, val.labels, t_pool[w]))
    allowed = [w for w in scores if scores[w][0] >= scores[0.0][0]]
    mix = min(allowed, key=lambda w: (scores[w][1], w))
    scale = mix * t_encoder / ((1 - mix) * t_lexical)
    return LexicalPool(l2, mix, scale, scores, lexical_val, only, t_encoder, t_pool[mix])


def final_lexical(fit, val, pool: LexicalPool, special_ids: set[int], num_classes: int) -> LexicalHead | None:
    """The kept lexical part: refitted on fit + validation with its penalty, times a."""
    if not pool.mix:
        return None
    both_ids, both_y = fit.ids + val.ids, np.concatenate([fit.labels, val.labels])
    ids, idf = fit_vocabulary(both_ids, special_ids)
    both = fit_head(features(both_ids, ids, idf), both_y, num_classes, pool.l2)
    return LexicalHead(ids, idf, both.weight.astype(np.float32), both.bias.astype(np.float32)).scaled(pool.scale)


def joint_lexical(special_ids: set[int], folds: int = FOLDS, seed: int = 0):
    """The recipe's `lexical_offsets` (shared/recipe/recipe.py: OffsetSource): a * the lexical
    logits, the fit split's out of fold; None when w = 0 (the recipe then trains the encoder alone)."""

    def offsets(fit_ids, y_fit, val_ids, y_val, encoder_val) -> LogitOffsets | None:
        fit, val = SplitView(None, fit_ids, y_fit), SplitView(None, val_ids, y_val)
        num_classes = encoder_val.shape[1]
        pool = pool_lexical(fit, val, encoder_val, special_ids, num_classes)
        if not pool.mix:
            return None
        out_of_fold = np.zeros((len(y_fit), num_classes))  # (N_fit, C)
        order = np.random.default_rng(seed).permutation(len(y_fit))
        for held in np.array_split(order, folds):
            rest = np.setdiff1d(order, held)
            texts = [fit_ids[i] for i in rest]
            ids, idf = fit_vocabulary(texts, special_ids)
            head = fit_head(features(texts, ids, idf), y_fit[rest], num_classes, pool.l2)
            out_of_fold[held] = features([fit_ids[i] for i in held], ids, idf) @ head.weight.T + head.bias
        return LogitOffsets(
            (pool.scale * out_of_fold).astype(np.float32), (pool.scale * pool.val_logits).astype(np.float32), pool
        )

    return offsets


def choose_parts(
    views: dict,
    head_weight: np.ndarray,
    head_bias: np.ndarray,
    head_l2: float | None,
    special_ids: set[int],
    lexical: bool = True,
    calibrate: bool = True,
    joint: LogitOffsets | None = None,
) -> PartsChoice:
    """The parts for the recipe's kept adapter (head (C, H), (C,)); `views` its "fit" and "val"
    `SplitView`s; `head_l2` the penalty its head was refitted on fit + validation with (None: the
    head as given); `joint`: the lexical part it was trained around (its w is kept)."""
    fit, val = views["fit"], views["val"]
    num_classes = len(head_bias)
    if head_l2 is not None:  # the kept head saw validation: score the one fitted on the fit split alone
        head = fit_head(fit.features, fit.labels, num_classes, head_l2, joint.fit if joint else None)
        head_weight, head_bias = head.weight, head.bias
    encoder_val = val.features.astype(np.float64) @ head_weight.T + head_bias  # (N_val, H) @ (H, C) -> (N_val, C)
    if joint is not None:
        pool = joint.info
        logits = encoder_val + joint.val  # (N_val, C): encoder + a * lexical
        temperature = fit_temperature(logits, val.labels) if calibrate else 1.0
    elif lexical:
        pool = pool_lexical(fit, val, encoder_val, special_ids, num_classes)
        logits = encoder_val + pool.scale * pool.val_logits  # (N_val, C): the stored model before its temperature
        temperature = pool.t_encoder * pool.t_pool / (1 - pool.mix) if calibrate else 1.0  # logits / T = pool / T_f
    else:
        pool = LexicalPool(None, 0.0, 0.0, {}, np.zeros_like(encoder_val), 0.0)
        logits, temperature = encoder_val, fit_temperature(encoder_val, val.labels) if calibrate else 1.0
    if not _significant(logits, val.labels, temperature):
        temperature = 1.0
    final = final_lexical(fit, val, pool, special_ids, num_classes)
    return PartsChoice(
        parts=OutputParts(final, temperature),
        mix=pool.mix,
        lexical_l2=pool.l2 if pool.mix else None,
        vocabulary=len(final.ids) if final is not None else 0,
        scores=pool.scores,
        val_nll=(nll(logits, val.labels), nll(logits, val.labels, temperature)),
        val_ece=(
            expected_calibration_error(logits, val.labels),
            expected_calibration_error(logits, val.labels, temperature),
        ),
        lexical_only_accuracy=pool.only,
        lexical_tried=lexical,
        joint=joint is not None,
    )


def _significant(logits: np.ndarray, labels: np.ndarray, temperature: float) -> bool:
    """Whether `temperature` lowers the validation loss of `logits` (N, C) by more than
    `TEMPERATURE_SIGNIFICANCE` standard errors of the paired per-example differences: on ~100
    texts a temperature near 1 fits noise, and may raise the loss on new texts."""
    gain, spread = paired_gain(example_losses(logits, labels), example_losses(logits / temperature, labels))
    return -gain > TEMPERATURE_SIGNIFICANCE * spread


def personal_logits(view, head_weight: np.ndarray, head_bias: np.ndarray, parts: OutputParts) -> np.ndarray:
    """(N, C) logits of the personal model before its temperature: encoder head + lexical part."""
    encoder = view.features.astype(np.float64) @ head_weight.T + head_bias  # (N, H) @ (H, C)
    return encoder + lexical_part(view.ids, parts.lexical, len(head_bias))


def held_out(view, head_weight: np.ndarray, head_bias: np.ndarray, parts: OutputParts) -> HeldOut:
    """The personal model (kept head, `parts`) on the recipe's "test" view."""
    logits, labels, t = personal_logits(view, head_weight, head_bias, parts), view.labels, parts.temperature
    return HeldOut(
        accuracy=accuracy(logits, labels),
        nll_before=nll(logits, labels),
        nll_after=nll(logits, labels, t),
        ece_before=expected_calibration_error(logits, labels),
        ece_after=expected_calibration_error(logits, labels, t),
        temperature=t,
        examples=len(labels),
        ece_floor=sampling_floor(logits, t),
    )


def parts_after_recipe(
    recipe, special_ids: set[int], lexical: bool = True, calibrate: bool = True
) -> tuple[PartsChoice | None, HeldOut | None]:
    """What both runtimes do after the recipe (shared/recipe/recipe.py's `RecipeResult`): the parts of
    its kept adapter and the personal model on its test view (None without one); (None, None) with
    both parts switched off."""
    if not (lexical or calibrate):
        return None, None
    head = (recipe.params["head_weight"], recipe.params["head_bias"])
    choice = choose_parts(recipe.views, *head, recipe.head_l2, special_ids, lexical, calibrate, recipe.offsets)
    held = held_out(recipe.views["test"], *head, choice.parts) if "test" in recipe.views else None
    return choice, held


def parts_metadata(choice: PartsChoice | None) -> dict[str, str]:
    """The adapter file's metadata entries for the chosen parts (with the lexical share, for the record)."""
    if choice is None:
        return {}
    return {**parts_meta(choice.parts), **({"lexical_mix": repr(choice.mix)} if choice.mix else {})}
