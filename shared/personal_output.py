"""The parts of a personal classifier after its encoder's head: the lexical logits and the temperature.

    logits = (encoder logits + lexical logits) * exp(-log T)      (B, C)

`PersonalOutput` computes the second factor from the token ids (gathers over a (V,) idf table and
a (V, C) weight table: shared/lexical.py), so the PyTorch model, the merged ONNX graph and the
adapter-as-input graph compute the same logits. The parts as data, and how an adapter file stores
them: shared/output_parts.py. Reading them back from a file (`split_parts`) is here.
"""

import math

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from shared.errors import LoraXSError
from shared.lexical import LexicalHead, decode_ids
from shared.output_parts import TENSORS, OutputParts, parts_arrays, parts_meta  # noqa: F401 (re-exported)

PREFIX = "lexical."
GRAPH_INPUTS = ("lexical.idf_table", "lexical.weight_table", "lexical.bias", "calibration.log_temperature")
MIN_T, MAX_T = 0.05, 20.0


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
        idf_table, weight_table = get("lexical.idf_table"), get("lexical.weight_table")
        mask = attention_mask.to(idf_table.dtype)  # (B, T)
        same = (input_ids.unsqueeze(2) == input_ids.unsqueeze(1)).to(mask.dtype) * mask.unsqueeze(1)  # (B, T, T)
        counts = same.sum(-1).clamp(min=1.0)  # (B, T) occurrences of each position's id in its text
        weights = idf_table[input_ids] * mask * (1.0 + torch.log(counts)) / counts  # (B, T)
        norm = (weights * weights * counts).sum(-1, keepdim=True).sqrt().clamp(min=1e-12)  # (B, 1)
        lexical = (weights.unsqueeze(-1) * weight_table[input_ids]).sum(1) / norm  # (B, T, C) -> (B, C)
        out = logits.float() + lexical + get("lexical.bias")  # (B, C)
        return out * torch.exp(-get("calibration.log_temperature"))


def dense_tables(parts: OutputParts, vocab_size: int, num_classes: int) -> dict[str, torch.Tensor]:
    """The graph's view of the parts: (V,) idf and (V, C) weights, zero for ids without a weight."""
    idf, weight, bias = torch.zeros(vocab_size), torch.zeros(vocab_size, num_classes), torch.zeros(num_classes)
    if parts.lexical is not None:
        ids = torch.from_numpy(parts.lexical.ids)
        if len(ids) and int(ids.max()) >= vocab_size:
            raise LoraXSError(f"the lexical part names token id {int(ids.max())}, beyond the model's {vocab_size}")
        idf[ids] = torch.from_numpy(parts.lexical.idf)
        weight[ids] = torch.from_numpy(parts.lexical.weight).T  # (k, C)
        bias = torch.from_numpy(parts.lexical.bias).clone()
    log_t = torch.tensor([math.log(parts.temperature)])  # (1,)
    return {
        "lexical.idf_table": idf,
        "lexical.weight_table": weight,
        "lexical.bias": bias,
        "calibration.log_temperature": log_t,
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
