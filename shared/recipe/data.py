"""Texts to batches for the recipe: the validation split, the token length, and length-sorted
buckets padded per batch (numpy only)."""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from shared.errors import LoraXSError
from shared.recipe.backend import Batch
from shared.recipe.config import LENGTH_PERCENTILE, MIN_EXAMPLES, PersonalTrainingConfig

# token ids of each text (int64, special tokens included), truncated to max_length (None: whole)
Tokenize = Callable[[list[str], int | None], list[np.ndarray]]


def split_validation(labels: Sequence, fraction: float, seed: int, stratify: bool) -> tuple[list[int], list[int]]:
    """(fit, validation) indices: `fraction` of every class (at least one example of a class
    with two or more), seeded; both sorted."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    if n < MIN_EXAMPLES:
        raise LoraXSError(f"{n} training examples are too few to hold some out for validation (need {MIN_EXAMPLES})")
    groups: dict = {}
    for index, key in enumerate(labels if stratify else [0] * n):
        groups.setdefault(key, []).append(index)
    val = []
    for indices in groups.values():
        take = int(round(fraction * len(indices)))
        take = max(take, 1) if len(indices) >= 2 else 0
        val += list(rng.permutation(indices)[:take])
    val_set = set(int(i) for i in val)
    return [i for i in range(n) if i not in val_set], sorted(val_set)


def choose_max_length(counts: Sequence[int], config: PersonalTrainingConfig, limit: int | None = None) -> int:
    """`config.max_length`, else the `LENGTH_PERCENTILE` of the token counts (rounded up to 8, in
    [min_length, length_cap]); never above `limit` (what the tokenizer and model accept)."""
    if config.max_length is not None:
        return min(config.max_length, limit) if limit else config.max_length
    length = int(math.ceil(np.percentile(counts, LENGTH_PERCENTILE) / 8) * 8) if len(counts) else config.min_length
    limit = min(config.length_cap, limit or config.length_cap)
    return max(min(length, limit), min(config.min_length, limit))


@dataclass
class Examples:
    """Tokenized texts (each (T_i,) int64, already truncated) and their labels (N,) int64."""

    ids: list[np.ndarray]
    labels: np.ndarray

    def tokens(self, indices: Sequence[int]) -> int:
        return int(sum(len(self.ids[i]) for i in indices))


def pad_batch(examples: Examples, indices: Sequence[int], pad_id: int) -> Batch:
    """One batch padded to its longest text."""
    length = max(len(examples.ids[i]) for i in indices)
    input_ids = np.full((len(indices), length), pad_id, dtype=np.int64)  # (B, T)
    mask = np.zeros((len(indices), length), dtype=np.int64)  # (B, T)
    for row, i in enumerate(indices):
        input_ids[row, : len(examples.ids[i])] = examples.ids[i]
        mask[row, : len(examples.ids[i])] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "token_type_ids": np.zeros_like(input_ids),
        "labels": examples.labels[np.asarray(indices, dtype=np.int64)].astype(np.int64),
        "example_index": np.asarray(indices, dtype=np.int64),
    }


def make_batches(
    examples: Examples, indices: Sequence[int], batch_size: int, pad_id: int, rng: np.random.Generator | None = None
) -> list[Batch]:
    """Batches of texts of similar length. With `rng` (training): the texts are shuffled, cut
    into windows of 8 batches, each window sorted by length and cut into batches, and the
    batches shuffled; without (evaluation): sorted by length over all."""
    indices = list(indices)
    if rng is None:
        order = sorted(indices, key=lambda i: len(examples.ids[i]))
        return [pad_batch(examples, order[k : k + batch_size], pad_id) for k in range(0, len(order), batch_size)]
    shuffled = [indices[k] for k in rng.permutation(len(indices))]
    window = 8 * batch_size
    chunks = []
    for start in range(0, len(shuffled), window):
        part = sorted(shuffled[start : start + window], key=lambda i: len(examples.ids[i]))
        chunks += [part[k : k + batch_size] for k in range(0, len(part), batch_size)]
    return [pad_batch(examples, chunks[k], pad_id) for k in rng.permutation(len(chunks))]
