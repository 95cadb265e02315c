"""The parts of a personal classifier after its encoder's head, as data (numpy only).

    logits = (encoder logits + lexical logits) / T        (N, C)

In a personal adapter file they are stored compactly: tensors `lexical.idf` (k,), `lexical.weight`
(C, k), `lexical.bias` (C,) and, in the (checksummed) metadata, `lexical_ids` (the k vocabulary
ids, base64) and `temperature`. They stay on the device: they are not model parameters, so what
a federation moves never holds them. shared/personal_output.py computes them in PyTorch (and so in
the exported graphs); this module is what the numpy recipe and the onnxruntime path need.
"""

from dataclasses import dataclass

import numpy as np

from shared.lexical import LexicalHead, encode_ids, features

TENSORS = ("lexical.idf", "lexical.weight", "lexical.bias")


@dataclass(frozen=True)
class OutputParts:
    """lexical: None = the encoder alone (its weights already scaled by how much of it is used);
    temperature: 1.0 = uncalibrated."""

    lexical: LexicalHead | None = None
    temperature: float = 1.0

    @property
    def empty(self) -> bool:
        return self.lexical is None and self.temperature == 1.0


def lexical_part(texts: list[np.ndarray], head: LexicalHead | None, num_classes: int) -> np.ndarray:
    """(N, C) lexical logits W x + b of token-id texts (zeros without a lexical part)."""
    if head is None:
        return np.zeros((len(texts), num_classes), dtype=np.float64)
    return features(texts, head.ids, head.idf) @ head.weight.T.astype(np.float64) + head.bias  # (N, k) @ (k, C)


def parts_arrays(parts: OutputParts) -> dict[str, np.ndarray]:
    """The tensors a personal adapter file stores (none without a lexical part)."""
    if parts.lexical is None:
        return {}
    head = parts.lexical
    return {"lexical.idf": head.idf.copy(), "lexical.weight": head.weight.copy(), "lexical.bias": head.bias.copy()}


def parts_meta(parts: OutputParts) -> dict[str, str]:
    """The metadata entries (strings) a personal adapter file stores."""
    out = {"temperature": repr(float(parts.temperature))} if parts.temperature != 1.0 else {}
    if parts.lexical is not None:
        out["lexical_ids"] = encode_ids(parts.lexical.ids)
    return out
