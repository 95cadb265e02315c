"""The lexical part of a personal model: a linear head over idf-weighted bag-of-wordpiece features.

The words are the model's own tokenizer's wordpieces (the ids the encoder reads, truncated the
same way), so a device needs no second tokenizer. For one text with token ids t_1..t_T:

    c_v  = how often id v occurs in the text              (sublinear tf: 1 + log c_v)
    x_v  = idf_v (1 + log c_v) / || idf (1 + log c) ||_2   over the vocabulary ids seen in training
    lexical logits = W x + b                               W (C, k), b (C,)

which is TF-IDF (sublinear, L2-normalised) over wordpieces. The same numbers come from token
positions alone (`lexical_logits`): position t with id v weighs w_t = idf_v (1 + log c_v) / c_v,
so sum_t w_t W[:, t_t] = W x ||.||, and ||.||^2 = sum_t w_t^2 c_t. That form needs only gathers
over a (vocab,) idf table and a (vocab, C) weight table, so the ONNX graphs compute it exactly.

Numpy only. The weights are fit by the recipe's closed-form head (shared/recipe/head.py).
"""

import base64
import binascii
from dataclasses import dataclass

import numpy as np

MIN_DF = 2  # a wordpiece must occur in this many training texts to get a weight
MAX_IDS = 200_000  # more distinct ids than any tokenizer this project loads: a crafted file


@dataclass(frozen=True)
class LexicalHead:
    ids: np.ndarray  # (k,) int64, sorted vocabulary ids with a weight
    idf: np.ndarray  # (k,) float32
    weight: np.ndarray  # (C, k) float32
    bias: np.ndarray  # (C,) float32

    def scaled(self, factor: float) -> "LexicalHead":
        """The same head with its logits multiplied by `factor` (how much of it the model uses)."""
        return LexicalHead(
            self.ids, self.idf, (self.weight * factor).astype(np.float32), (self.bias * factor).astype(np.float32)
        )


def token_lists(input_ids: np.ndarray, attention_mask: np.ndarray) -> list[np.ndarray]:
    """(B, T) padded ids -> one id array per text (padding dropped)."""
    return [row[mask.astype(bool)] for row, mask in zip(input_ids, attention_mask)]


def fit_vocabulary(texts: list[np.ndarray], skip_ids: set[int], min_df: int = MIN_DF) -> tuple[np.ndarray, np.ndarray]:
    """(ids, idf) of the ids in at least `min_df` texts, special tokens (`skip_ids`) left out;
    idf = ln((1 + n) / (1 + df)) + 1 (scikit-learn's smooth idf)."""
    df: dict[int, int] = {}
    for ids in texts:
        for v in set(int(i) for i in ids):
            df[v] = df.get(v, 0) + 1
    kept = sorted(v for v, count in df.items() if count >= min_df and v not in skip_ids)
    ids = np.array(kept, dtype=np.int64)  # (k,)
    counts = np.array([df[v] for v in kept], dtype=np.float64)
    idf = np.log((1 + len(texts)) / (1 + counts)) + 1.0  # (k,)
    return ids, idf.astype(np.float32)


def features(texts: list[np.ndarray], ids: np.ndarray, idf: np.ndarray) -> np.ndarray:
    """(N, k) sublinear, L2-normalised tf-idf over `ids` (ids not among them are ignored)."""
    column = {int(v): j for j, v in enumerate(ids)}
    x = np.zeros((len(texts), len(ids)), dtype=np.float64)  # (N, k)
    for row, text in enumerate(texts):
        found, counts = np.unique(text, return_counts=True)
        for v, c in zip(found, counts):
            j = column.get(int(v))
            if j is not None:
                x[row, j] = idf[j] * (1.0 + np.log(c))
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
    return x / np.maximum(norms, 1e-12)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))  # (N, C)
    return shifted / shifted.sum(-1, keepdims=True)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of (N, C) logits against (N,) class ids."""
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean()) if len(labels) else 0.0


def lexical_logits(input_ids: np.ndarray, attention_mask: np.ndarray, head: LexicalHead) -> np.ndarray:
    """(B, T) ids -> (B, C) logits W x + b, computed per position (the form the graphs use)."""
    column = {int(v): j for j, v in enumerate(head.ids)}
    out = np.zeros((len(input_ids), len(head.bias)), dtype=np.float64)
    for row, text in enumerate(token_lists(input_ids, attention_mask)):
        cols = np.array([column.get(int(v), -1) for v in text], dtype=np.int64)  # (T,)
        counts = (text[:, None] == text[None, :]).sum(-1)  # (T,) occurrences of each position's id
        weights = np.where(cols >= 0, head.idf[cols] * (1 + np.log(counts)) / counts, 0.0)  # (T,)
        norm = np.sqrt((weights**2 * counts).sum())
        gathered = head.weight.T[cols].astype(np.float64)  # (T, C); rows of unknown ids are weighted 0
        out[row] = weights @ gathered / max(norm, 1e-12)
    return (out + head.bias).astype(np.float32)


def encode_ids(ids: np.ndarray) -> str:
    """Sorted ids as base64 of little-endian uint32: a metadata string (checksummed with it)."""
    return base64.b64encode(np.asarray(ids, dtype="<u4").tobytes()).decode("ascii")


def decode_ids(text: object, count: int, vocab_size: int | None = None) -> np.ndarray:
    """Inverse of `encode_ids`; ValueError with the reason for anything but `count` strictly
    increasing ids below `vocab_size`."""
    if not isinstance(text, str) or len(text) > 8 * MAX_IDS:
        raise ValueError("'lexical_ids' must be a base64 string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError("'lexical_ids' is not valid base64") from None
    if len(raw) != 4 * count:
        raise ValueError(f"'lexical_ids' holds {len(raw) // 4} ids, the lexical tensors {count}")
    ids = np.frombuffer(raw, dtype="<u4").astype(np.int64)
    if len(ids) > 1 and not (np.diff(ids) > 0).all():
        raise ValueError("'lexical_ids' are not strictly increasing")
    if vocab_size is not None and len(ids) and ids[-1] >= vocab_size:
        raise ValueError(f"'lexical_ids' name id {ids[-1]}, beyond the tokenizer's {vocab_size}")
    return ids
