"""The lexical part of a personal model: a linear head over idf-weighted bags of wordpieces and
wordpiece pairs.

The words are the model's own tokenizer's wordpieces (the ids the encoder reads, truncated the
same way), so a device needs no second tokenizer. A text with token ids t_1..t_T has T terms for
its wordpieces and T - 1 for its adjacent pairs (bigrams), each pair one integer key:

    term(t_i)            = t_i                                   (< STRIDE)
    term(t_i, t_i+1)     = (t_i + 1) * STRIDE + t_i+1              (>= STRIDE)
    c_v  = how often term v occurs in the text                  (sublinear tf: 1 + log c_v)
    x_v  = idf_v (1 + log c_v) / || idf (1 + log c) ||_2         over the terms kept in training
    lexical logits = W x + b                                     W (C, k), b (C,)

which is TF-IDF (sublinear, L2-normalised) over wordpiece unigrams and bigrams, as TF-IDF + LR
baselines use word uni- and bigrams. The same numbers come from token positions alone
(`lexical_logits`): a position whose term v occurs c_v times weighs w = idf_v (1 + log c_v) / c_v,
so sum_positions w W[:, v] = W x ||.||, and ||.||^2 = sum_positions w^2 c. That form needs only
gathers, so the ONNX graphs compute it exactly: wordpieces index a (vocab,) table; a pair's key
indexes a table of `BIGRAM_SLOTS` slots at key % BIGRAM_SLOTS, which holds key // BIGRAM_SLOTS + 1
to tell the kept pair from any other key landing there. So no two kept pairs may share a slot:
`fit_vocabulary` keeps the pair in more texts (`slot_clashes` checks a file for it).

Numpy only. The weights are fit by the recipe's closed-form head (shared/recipe/head.py).
"""

import base64
import binascii
from dataclasses import dataclass

import numpy as np

MIN_DF = 2  # a term must occur in this many training texts to get a weight
MAX_IDS = 200_000  # more kept terms than any folder gives: a crafted file
STRIDE = 1 << 20  # a pair's key: (first + 1) * STRIDE + second; every tokenizer here has fewer ids
BIGRAM_SLOTS = 131_071  # a prime: the pair table's slots in the graphs (key % BIGRAM_SLOTS)


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


def terms(text: np.ndarray) -> np.ndarray:
    """(2T - 1,) int64 terms of one text's (T,) token ids: its wordpieces, then its adjacent pairs."""
    text = np.asarray(text, dtype=np.int64)
    return np.concatenate([text, (text[:-1] + 1) * STRIDE + text[1:]])


def pair_of(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (first, second) wordpiece ids of bigram keys."""
    return key // STRIDE - 1, key % STRIDE


def wordpieces(ids: np.ndarray) -> np.ndarray:
    """Every wordpiece id that terms name: the wordpieces themselves and both halves of each pair."""
    ids = np.asarray(ids, dtype=np.int64)
    first, second = pair_of(ids[ids >= STRIDE])
    return np.concatenate([ids[ids < STRIDE], first, second])


def fit_vocabulary(texts: list[np.ndarray], skip_ids: set[int], min_df: int = MIN_DF) -> tuple[np.ndarray, np.ndarray]:
    """(terms, idf) of the terms in at least `min_df` texts, none holding a special token
    (`skip_ids`), no two pairs in one slot (the pair in more texts kept, then the smaller key);
    idf = ln((1 + n) / (1 + df)) + 1 (scikit-learn's smooth idf)."""
    df: dict[int, int] = {}
    for ids in texts:
        for v in set(terms(ids).tolist()):
            df[v] = df.get(v, 0) + 1
    skip = np.array(sorted(skip_ids), dtype=np.int64)
    kept = np.array(sorted(v for v, count in df.items() if count >= min_df), dtype=np.int64)
    first, second = pair_of(kept)
    bigram = kept >= STRIDE
    special = np.where(bigram, np.isin(first, skip) | np.isin(second, skip), np.isin(kept, skip))
    kept = kept[~special]
    slot_owner: dict[int, int] = {}
    for v in sorted(kept[kept >= STRIDE].tolist(), key=lambda v: (-df[v], v)):
        slot_owner.setdefault(v % BIGRAM_SLOTS, v)
    ids = np.array(sorted([*kept[kept < STRIDE].tolist(), *slot_owner.values()]), dtype=np.int64)  # (k,)
    counts = np.array([df[v] for v in ids.tolist()], dtype=np.float64)
    idf = np.log((1 + len(texts)) / (1 + counts)) + 1.0  # (k,)
    return ids, idf.astype(np.float32)


def slot_clashes(ids: np.ndarray) -> int:
    """How many kept pairs share a graph slot with another (0 for any `fit_vocabulary` answer)."""
    bigrams = np.asarray(ids)[np.asarray(ids) >= STRIDE]
    return len(bigrams) - len(np.unique(bigrams % BIGRAM_SLOTS))


def features(texts: list[np.ndarray], ids: np.ndarray, idf: np.ndarray) -> np.ndarray:
    """(N, k) sublinear, L2-normalised tf-idf of the texts' terms over `ids` (other terms ignored)."""
    column = {int(v): j for j, v in enumerate(ids)}
    x = np.zeros((len(texts), len(ids)), dtype=np.float64)  # (N, k)
    for row, text in enumerate(texts):
        found, counts = np.unique(terms(text), return_counts=True)
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
    """(B, T) ids -> (B, C) logits W x + b, computed per term position (the form the graphs use)."""
    column = {int(v): j for j, v in enumerate(head.ids)}
    out = np.zeros((len(input_ids), len(head.bias)), dtype=np.float64)
    for row, ids in enumerate(token_lists(input_ids, attention_mask)):
        text = terms(ids)  # (2T - 1,)
        cols = np.array([column.get(int(v), -1) for v in text], dtype=np.int64)
        counts = (text[:, None] == text[None, :]).sum(-1)  # occurrences of each position's term
        weights = np.where(cols >= 0, head.idf[cols] * (1 + np.log(counts)) / counts, 0.0)  # (T,)
        norm = np.sqrt((weights**2 * counts).sum())
        gathered = head.weight.T[cols].astype(np.float64)  # (T, C); rows of unknown ids are weighted 0
        out[row] = weights @ gathered / max(norm, 1e-12)
    return (out + head.bias).astype(np.float32)


def encode_ids(ids: np.ndarray) -> str:
    """Sorted terms as base64 of little-endian uint32, or uint64 once a pair's key needs it: a
    metadata string (checksummed with it)."""
    ids = np.asarray(ids, dtype=np.int64)
    dtype = "<u4" if not len(ids) or ids.max() < 2**32 else "<u8"
    return base64.b64encode(ids.astype(dtype).tobytes()).decode("ascii")


def decode_ids(text: object, count: int, vocab_size: int | None = None) -> np.ndarray:
    """Inverse of `encode_ids`; ValueError with the reason for anything but `count` strictly
    increasing terms whose wordpieces are below `vocab_size`, no two pairs in one slot."""
    if not isinstance(text, str) or len(text) > 12 * MAX_IDS:
        raise ValueError("'lexical_ids' must be a base64 string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError("'lexical_ids' is not valid base64") from None
    if len(raw) not in (4 * count, 8 * count):
        raise ValueError(f"'lexical_ids' holds {len(raw)} bytes, not 4 or 8 for each of the {count} lexical terms")
    ids = np.frombuffer(raw, dtype="<u4" if len(raw) == 4 * count else "<u8")
    if len(ids) and ids.max() >= (STRIDE + 1) * STRIDE:
        raise ValueError(f"'lexical_ids' holds {int(ids.max())}, beyond any term")
    ids = ids.astype(np.int64)
    if len(ids) > 1 and not (np.diff(ids) > 0).all():
        raise ValueError("'lexical_ids' are not strictly increasing")
    pieces = wordpieces(ids)
    if vocab_size is not None and len(pieces) and pieces.max() >= vocab_size:
        raise ValueError(f"'lexical_ids' name wordpiece {pieces.max()}, beyond the tokenizer's {vocab_size}")
    if slot_clashes(ids):
        raise ValueError("'lexical_ids' hold two wordpiece pairs that share a slot of the graphs' pair table")
    return ids
