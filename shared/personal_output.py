"""The parts of a personal classifier after its encoder's head: the lexical logits and the temperature.

    logits = (encoder logits + lexical logits) * exp(-log T)      (B, C)

`PersonalOutput` computes the second factor from the token ids: gathers over a (V,) idf table and a
(V, C) weight table for the wordpieces, and over `BIGRAM_SLOTS` slots for the wordpiece pairs
((S,) check, (S,) idf, (S, C) weights; shared/lexical.py), so the PyTorch model, the merged ONNX
graph and the adapter-as-input graph compute the same logits. The parts as data, and how an adapter file stores
them: shared/output_parts.py. Reading them back from a file (`split_parts`) is here.
"""

import math

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from shared.errors import LoraXSError
from shared.lexical import BIGRAM_SLOTS, STRIDE, LexicalHead, decode_ids, wordpieces
from shared.output_parts import TENSORS, OutputParts, parts_arrays, parts_meta  # noqa: F401 (re-exported)

PREFIX = "lexical."
GRAPH_INPUTS = (
    "lexical.idf_table",
    "lexical.weight_table",
    "lexical.bias",
    "calibration.log_temperature",
    "lexical.pair_check",
    "lexical.pair_idf",
    "lexical.pair_weight",
)
# the stored T also carries the encoder's share of the pooled parts (shared/personal_parts.py):
# T_encoder * T_final / (1 - w) with each T in [0.25, 20] and w <= 0.9
MIN_T, MAX_T = 0.05, 5000.0


class PersonalOutput(nn.Module):
    """(B, T) ids, (B, C) encoder logits -> (B, C) personal logits. Tables are buffers (constants
    of an export) unless passed to `forward` (the adapter-as-input graph's inputs)."""

    def __init__(self, parts: OutputParts, vocab_size: int, num_classes: int):
        super().__init__()
        tables = dense_tables(parts, vocab_size, num_classes)
        for name, value in tables.items():
            self.register_buffer(name.replace(".", "_"), value)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits: torch.Tensor,
        tables: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        get = (lambda n: tables[n]) if tables else (lambda n: getattr(self, n.replace(".", "_")))
        mask = attention_mask.to(get("lexical.idf_table").dtype)  # (B, T)
        pieces = _weighted(input_ids, mask, get("lexical.idf_table")[input_ids], get("lexical.weight_table"), input_ids)
        pairs = (input_ids[:, :-1] + 1) * STRIDE + input_ids[:, 1:]  # (B, T - 1) keys
        slot = torch.remainder(pairs, BIGRAM_SLOTS)  # (B, T - 1)
        check = torch.div(pairs, BIGRAM_SLOTS, rounding_mode="floor") + 1  # the kept pair's own mark
        pair_mask = mask[:, :-1] * mask[:, 1:]
        found = (get("lexical.pair_check")[slot] == check.to(mask.dtype)).to(mask.dtype)  # (B, T - 1)
        pair_idf = get("lexical.pair_idf")[slot] * found
        pair_part = _weighted(pairs, pair_mask, pair_idf, get("lexical.pair_weight"), slot)
        norm = (pieces[1] + pair_part[1]).sqrt().clamp(min=1e-12)  # (B, 1)
        out = logits.float() + (pieces[0] + pair_part[0]) / norm + get("lexical.bias")  # (B, C)
        return out * torch.exp(-get("calibration.log_temperature"))


def _weighted(
    terms: torch.Tensor, mask: torch.Tensor, idf: torch.Tensor, weight_table: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For (B, N) term positions (their idf (B, N), 0 where unknown): (sum_positions w W[:, term]
    (B, C), sum_positions w^2 c (B, 1)), w = idf (1 + log c) / c, c the term's count in its text;
    `rows` (B, N) index `weight_table`."""
    same = (terms.unsqueeze(2) == terms.unsqueeze(1)).to(mask.dtype) * mask.unsqueeze(1)  # (B, N, N)
    counts = same.sum(-1).clamp(min=1.0)  # (B, N) occurrences of each position's term in its text
    weights = idf * mask * (1.0 + torch.log(counts)) / counts  # (B, N)
    summed = (weights.unsqueeze(-1) * weight_table[rows]).sum(1)  # (B, N, C) -> (B, C)
    return summed, (weights * weights * counts).sum(-1, keepdim=True)


def dense_tables(parts: OutputParts, vocab_size: int, num_classes: int) -> dict[str, torch.Tensor]:
    """The graph's view of the parts: (V,) idf and (V, C) weights, zero for wordpieces without a
    weight; (S,) check marks, idf and (S, C) weights of the pairs' slots, zero where none is kept."""
    if vocab_size > STRIDE:
        raise LoraXSError(f"a lexical part needs a vocabulary below {STRIDE} ids; this model has {vocab_size}")
    idf, weight, bias = torch.zeros(vocab_size), torch.zeros(vocab_size, num_classes), torch.zeros(num_classes)
    check, pair_idf, pair_weight = (
        torch.zeros(BIGRAM_SLOTS),
        torch.zeros(BIGRAM_SLOTS),
        torch.zeros(BIGRAM_SLOTS, num_classes),
    )
    if parts.lexical is not None:
        head = parts.lexical
        single = head.ids < STRIDE
        ids, keys = torch.from_numpy(head.ids[single]), head.ids[~single]
        pieces = wordpieces(head.ids)
        if len(pieces) and int(pieces.max()) >= vocab_size:
            raise LoraXSError(f"the lexical part names token id {int(pieces.max())}, beyond the model's {vocab_size}")
        idf[ids] = torch.from_numpy(head.idf[single])
        weight[ids] = torch.from_numpy(head.weight[:, single]).T  # (k1, C)
        slots = torch.from_numpy(keys % BIGRAM_SLOTS)
        check[slots] = torch.from_numpy((keys // BIGRAM_SLOTS + 1).astype(np.float32))
        pair_idf[slots] = torch.from_numpy(head.idf[~single])
        pair_weight[slots] = torch.from_numpy(head.weight[:, ~single]).T  # (k2, C)
        bias = torch.from_numpy(head.bias).clone()
    log_t = torch.tensor([math.log(parts.temperature)])  # (1,)
    return {
        "lexical.idf_table": idf,
        "lexical.weight_table": weight,
        "lexical.bias": bias,
        "calibration.log_temperature": log_t,
        "lexical.pair_check": check,
        "lexical.pair_idf": pair_idf,
        "lexical.pair_weight": pair_weight,
    }


class PersonalClassifier(nn.Module):
    """A sequence classifier followed by its `PersonalOutput`: what a personal adapter file predicts."""

    def __init__(self, model: nn.Module, parts: OutputParts):
        super().__init__()
        self.model = model
        self.output = PersonalOutput(parts, model.config.vocab_size, model.classifier.out_features)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        tokens = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            tokens["token_type_ids"] = token_type_ids
        logits = self.output(input_ids, attention_mask, self.model(**tokens).logits)  # (B, C)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def parts_state(parts: OutputParts) -> dict[str, torch.Tensor]:
    """The tensors a personal adapter file stores, as torch tensors (none without a lexical part)."""
    return {name: torch.from_numpy(value) for name, value in parts_arrays(parts).items()}


def split_parts(
    state: dict[str, torch.Tensor], extra: dict[str, str], num_classes: int | None, source: str
) -> tuple[dict[str, torch.Tensor], OutputParts]:
    """(the adapter state without the parts, the parts) of a file; LoraXSError (one line) when
    they are malformed."""
    state = dict(state)
    tensors = {name: state.pop(name) for name in list(state) if name.startswith(PREFIX)}
    try:
        temperature = _temperature(extra.get("temperature", "1.0"))
        lexical = (
            _lexical(tensors, extra.get("lexical_ids"), num_classes) if tensors or "lexical_ids" in extra else None
        )
    except ValueError as err:
        raise LoraXSError(f"{source} has a malformed personal output part ({err})") from None
    return state, OutputParts(lexical, temperature)


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError("'temperature' is not a number") from None
    if not (math.isfinite(value) and MIN_T <= value <= MAX_T):
        raise ValueError(f"'temperature' must be in [{MIN_T}, {MAX_T}], got {str(text)[:20]!r}")
    return value


def _lexical(tensors: dict[str, torch.Tensor], ids_text, num_classes: int | None) -> LexicalHead:
    if set(tensors) != set(TENSORS) or ids_text is None:
        raise ValueError(f"the lexical part needs {', '.join(TENSORS)} and 'lexical_ids'")
    idf, weight, bias = (tensors[n].float().numpy() for n in TENSORS)
    if idf.ndim != 1 or weight.ndim != 2 or bias.ndim != 1 or weight.shape != (len(bias), len(idf)):
        raise ValueError(f"lexical shapes {idf.shape}, {weight.shape}, {bias.shape} do not fit (k,), (C, k), (C,)")
    if num_classes is not None and len(bias) != num_classes:
        raise ValueError(f"the lexical part has {len(bias)} classes, the adapter {num_classes}")
    if (idf < 0).any():
        raise ValueError("'lexical.idf' holds negative values")
    return LexicalHead(
        decode_ids(ids_text, len(idf)), idf.astype(np.float32), weight.astype(np.float32), bias.astype(np.float32)
    )
