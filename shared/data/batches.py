"""Turn a text dataset into a DataLoader of padded, tokenized batches."""

import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from shared.data.text_splits import check_task
from shared.errors import LoraXSError

IGNORE_INDEX = -100  # label value the loss skips (padding positions in causal-lm)
DEFAULT_BATCH_SIZE = 16  # training batches, on a device and in a federation
DEFAULT_MAX_LENGTH = 64  # tokens per text
EVAL_BATCH_SIZE = 64  # evaluation batches (no gradients: larger)


def make_loader(
    ds: Dataset,
    tokenizer,
    task: str,
    batch_size: int,
    max_length: int = DEFAULT_MAX_LENGTH,
    shuffle: bool = False,
    seed: int = 0,
) -> DataLoader:
    """Batches of dicts of tensors: input_ids, attention_mask (+ token_type_ids) and labels.

    Texts are tokenized per batch, truncated to `max_length` and padded to the longest in the
    batch. labels: int64 class ids (B,) for seq-cls; for causal-lm a copy of input_ids (B, T)
    with padding positions set to IGNORE_INDEX. A tokenizer without a pad token gets its eos token as
    pad token (the tokenizer is changed in place, as the model must use the same pad id).
    """
    check_task(task)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise LoraXSError("the tokenizer has neither a pad token nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    if task == "seq-cls" and "label" not in ds.column_names:
        raise LoraXSError("seq-cls needs a 'label' column in the dataset")

    texts = list(ds["text"])
    class_ids = list(ds["label"]) if task == "seq-cls" else [0] * len(texts)

    def collate(examples: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        batch_texts = [text for text, _ in examples]
        encoded = tokenizer(
            batch_texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        batch = dict(encoded)  # each (B, T)
        if task == "seq-cls":
            batch["labels"] = torch.tensor([label for _, label in examples], dtype=torch.int64)
        else:
            padding = batch["attention_mask"] == 0  # (B, T)
            batch["labels"] = batch["input_ids"].masked_fill(padding, IGNORE_INDEX)
        return batch

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        list(zip(texts, class_ids)),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=collate,
        num_workers=0,
    )
