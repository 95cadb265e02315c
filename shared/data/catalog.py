"""Resolve a dataset name (see DATASETS) or a local folder to text data for a task."""

from pathlib import Path

from datasets import Dataset, concatenate_datasets

from shared.data.local_folder import load_local_folder
from shared.data.rotten_tomatoes import load_rotten_tomatoes
from shared.data.text_splits import TextSplits, check_task, split_train_test
from shared.errors import LoraXSError

DATASETS = ("rotten-tomatoes",)


def load_dataset(name_or_dir: str, task: str = "seq-cls", seed: int = 0) -> TextSplits:
    """Train/test splits of a named dataset (seeded 80/20) or of a local folder.

    For causal-lm the texts are the language-modelling data and `labels` is None.
    """
    check_task(task)
    if name_or_dir == "rotten-tomatoes":
        reviews, labels = load_rotten_tomatoes()
        train, test = split_train_test(reviews, test_fraction=0.2, seed=seed)
        return TextSplits(train=train, test=test, labels=labels if task == "seq-cls" else None)
    if Path(name_or_dir).expanduser().is_dir():
        return load_local_folder(name_or_dir, task=task, seed=seed)
    raise LoraXSError(f"unknown dataset {name_or_dir!r}: not one of {', '.join(DATASETS)} and not a directory either")


def load_full_dataset(name_or_dir: str, task: str = "seq-cls", seed: int = 0) -> tuple[Dataset, list[str] | None]:
    """The whole dataset, unsplit, and its label names (None for causal-lm).

    Used to partition the data across clients; each client then splits its own partition.
    A local folder's train and test files are joined into one dataset.
    """
    check_task(task)
    if name_or_dir == "rotten-tomatoes":
        reviews, labels = load_rotten_tomatoes()
        return reviews, labels if task == "seq-cls" else None
    splits = load_dataset(name_or_dir, task=task, seed=seed)
    return concatenate_datasets([splits.train, splits.test]), splits.labels
