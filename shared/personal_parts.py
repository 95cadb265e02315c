"""After the encoder is trained: whether to add the lexical part, and the temperature, chosen on validation.

    encoder   <- the trained adapter; its head refitted on the fit split alone, so that the
                 validation split is held out from every part scored on it
    lexical   <- logistic regression on idf-weighted wordpieces of the fit split (shared/lexical.py),
                 by the recipe's closed-form head (shared/recipe/head.py), penalty chosen on
                 validation accuracy
    mix       <- logits = encoder + a * lexical, a in MIX_GRID; each scored by its validation
                 loss at its own best temperature; a > 0 is kept only when that loss is lower and
                 the validation accuracy at least a = 0's (a = 0, the encoder alone, wins ties:
                 the lexical part never makes the start worse on validation)
    temperature <- fit on the validation logits of the chosen mix (shared/calibration.py)
    final     -> the lexical part refitted on fit + validation (same penalty), times a; the
                 encoder's own head is the recipe's (already refitted on fit + validation)
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from shared.calibration import expected_calibration_error, fit_temperature, nll
from shared.data.batches import EVAL_BATCH_SIZE, make_loader
from shared.lexical import LexicalHead, accuracy, features, fit_vocabulary
from shared.linear_probe import head_inputs, linear_head
from shared.recipe.head import choose_head, fit_head
from shared.personal_output import OutputParts

MIX_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


@dataclass
class PartsChoice:
    parts: OutputParts
    mix: float  # a: how much of the lexical part is used (0 = none)
    lexical_l2: float | None
    vocabulary: int  # wordpieces with a weight (k)
    scores: dict[float, tuple[float, float]] = field(default_factory=dict)  # a -> (val accuracy, calibrated val loss)
    val_nll: tuple[float, float] = (0.0, 0.0)  # the chosen mix's validation loss before / after the temperature
    val_ece: tuple[float, float] = (0.0, 0.0)
    lexical_only_accuracy: float = 0.0  # the lexical head alone on validation


def choose_parts(model: nn.Module, fit, val, tokenizer, max_length: int, head_l2: float | None,
                 device: torch.device | str = "cpu", lexical: bool = True) -> PartsChoice | None:
    """The parts for `model` (the recipe's kept adapter) on the recipe's fit / validation
    datasets; None without a linear head over pooled features."""
    if linear_head(model) is None:
        return None
    num_classes = linear_head(model).out_features
    loader = lambda ds: make_loader(ds, tokenizer, "seq-cls", EVAL_BATCH_SIZE, max_length)  # noqa: E731
    (fit_x, fit_y), (val_x, val_y) = (tuple(t.numpy() for t in head_inputs(model, loader(ds), device)) for ds in (fit, val))
    if head_l2 is not None:  # the kept head saw validation: score the one fitted on the fit split alone
        head = fit_head(fit_x, fit_y, num_classes, head_l2)
        weight, bias = head.weight, head.bias
    else:
        weight, bias = (p.detach().float().cpu().numpy() for p in (linear_head(model).weight, linear_head(model).bias))
    encoder_val = (val_x @ weight.T + bias).astype(np.float64)  # (N_val, H) @ (H, C) -> (N_val, C)

    fit_ids, val_ids = _token_ids(fit, tokenizer, max_length), _token_ids(val, tokenizer, max_length)
    lexical_val, l2, only = np.zeros_like(encoder_val), None, 0.0
    ids, idf = fit_vocabulary(fit_ids, set(tokenizer.all_special_ids)) if lexical else (np.zeros(0), None)
    lexical = lexical and len(ids) > 0  # no wordpiece in two fit texts: nothing to weigh
    if lexical:
        x_fit, x_val = features(fit_ids, ids, idf), features(val_ids, ids, idf)
        lexical_head, only = choose_head((x_fit, fit_y), (x_val, val_y), num_classes)
        l2, lexical_val = lexical_head.l2, x_val @ lexical_head.weight.T + lexical_head.bias  # (N_val, C)
    scores = {}
    for mix in MIX_GRID if lexical else (0.0,):
        logits = encoder_val + mix * lexical_val
        scores[mix] = (accuracy(logits, val_y), nll(logits, val_y, fit_temperature(logits, val_y)))
    allowed = [m for m in scores if scores[m][0] >= scores[0.0][0]]
    mix = min(allowed, key=lambda m: (scores[m][1], m))
    logits = encoder_val + mix * lexical_val
    temperature = fit_temperature(logits, val_y)
    head = None
    if mix > 0:
        both_ids, both_y = fit_ids + val_ids, np.concatenate([fit_y, val_y])
        ids, idf = fit_vocabulary(both_ids, set(tokenizer.all_special_ids))
        both = fit_head(features(both_ids, ids, idf), both_y, num_classes, l2)
        head = LexicalHead(ids, idf, both.weight.astype(np.float32), both.bias.astype(np.float32)).scaled(mix)
    return PartsChoice(
        parts=OutputParts(head, temperature), mix=mix, lexical_l2=l2 if mix > 0 else None,
        vocabulary=len(head.ids) if head is not None else 0, scores=scores,
        val_nll=(nll(logits, val_y), nll(logits, val_y, temperature)),
        val_ece=(expected_calibration_error(logits, val_y), expected_calibration_error(logits, val_y, temperature)),
        lexical_only_accuracy=only,
    )


def _token_ids(ds, tokenizer, max_length: int) -> list[np.ndarray]:
    """The ids the encoder reads (truncated to `max_length`, special tokens included)."""
    encoded = tokenizer(list(ds["text"]), truncation=True, max_length=max_length)["input_ids"]
    return [np.asarray(ids, dtype=np.int64) for ids in encoded]


@torch.no_grad()
def collect_logits(model: nn.Module, loader, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(N, C) logits and (N,) labels of a classifier over `loader`."""
    model.to(device).eval()
    logits, labels = [], []
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits.append(model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float().cpu())
        labels.append(batch["labels"].cpu())
    return torch.cat(logits).double().numpy(), torch.cat(labels).numpy()
