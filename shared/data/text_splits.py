"""The train/test pair every loader returns, and the seeded split that makes one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from shared.errors import LoraXSError

if TYPE_CHECKING:  # importing datasets costs seconds; the device path never needs it
    from datasets import Dataset

TASKS = ("seq-cls", "causal-lm")


@dataclass
class TextSplits:
    """A dataset split for one task.

    Columns: "text" (str) and, for seq-cls, "label" (int class id); extra columns are allowed.
    `labels` holds the class names (index == class id), or None for causal-lm.
    """

    train: Dataset
    test: Dataset
    labels: list[str] | None


def check_task(task: str) -> None:
    """Raise LoraXSError unless `task` is one of TASKS."""
    if task not in TASKS:
        raise LoraXSError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")


def split_train_test(ds: Dataset, test_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Shuffle `ds` with `seed` and cut off `test_fraction` of it as the test set.

    Both parts are non-empty whenever `ds` has at least 2 rows.
    """
    if not 0.0 < test_fraction < 1.0:
        raise LoraXSError(f"the test fraction must be between 0 and 1, got {test_fraction}")
    if len(ds) < 2:
        raise LoraXSError(f"need at least 2 examples to split into train and test, got {len(ds)}")
    num_test = min(max(round(len(ds) * test_fraction), 1), len(ds) - 1)
    parts = ds.train_test_split(test_size=num_test, seed=seed)
    return parts["train"], parts["test"]


def split_indices(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, test) row indices of `split_train_test` on `n` rows, without datasets: the same
    permutation (`np.random.default_rng(seed)`), test first (tests/test_onnx_training.py checks)."""
    if not 0.0 < test_fraction < 1.0:
        raise LoraXSError(f"the test fraction must be between 0 and 1, got {test_fraction}")
    if n < 2:
        raise LoraXSError(f"need at least 2 examples to split into train and test, got {n}")
    num_test = min(max(round(n * test_fraction), 1), n - 1)
    permutation = np.random.default_rng(seed).permutation(n)
    return [int(i) for i in permutation[num_test:]], [int(i) for i in permutation[:num_test]]
