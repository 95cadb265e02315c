"""Turn a text dataset into a DataLoader of padded, tokenized batches."""

import math

import torch
from datasets import Dataset
from torch.utils.data import BatchSampler, DataLoader, Sampler, SequentialSampler

from shared.data.text_splits import check_task
from shared.errors import LoraXSError

IGNORE_INDEX = -100  # label value the loss skips (padding positions in causal-lm)
DEFAULT_BATCH_SIZE = 16  # training batches, on a device and in a federation
DEFAULT_MAX_LENGTH = 64  # tokens per text
EVAL_BATCH_SIZE = 64  # evaluation batches (no gradients: larger)
BUCKET_BATCHES = 8  # a shuffled window of this many batches is sorted by length before it is cut


class LengthBuckets(Sampler[list[int]]):
    """Shuffled batches of texts of similar length: every pass shuffles the texts, sorts each
    window of `BUCKET_BATCHES` batches by length, cuts it into batches and shuffles the batches.
    As many batches as plain shuffling (ceil(n / batch_size)), far less padding."""

    def __init__(self, lengths: list[int], batch_size: int, generator: torch.Generator):
        self.lengths, self.batch_size, self.generator = lengths, batch_size, generator

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        window = BUCKET_BATCHES * self.batch_size
        batches = []
        for start in range(0, len(order), window):
            part = sorted(order[start : start + window], key=self.lengths.__getitem__)
            batches += [part[k : k + self.batch_size] for k in range(0, len(part), self.batch_size)]
        for k in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[k]


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

    Texts are tokenized once, truncated to `max_length`; a batch is padded to its longest text.
    Shuffled batches come from `LengthBuckets` (similar lengths together); unshuffled ones keep
    the dataset's order. labels: int64 class ids (B,) for seq-cls; for causal-lm a copy of
    input_ids (B, T) with padding positions set to IGNORE_INDEX. A tokenizer without a pad token
    gets its eos token as pad token (the tokenizer is changed in place, as the model must use the
    same pad id).
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
    encoded = tokenizer(texts, truncation=True, max_length=max_length) if texts else {"input_ids": []}
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    left = getattr(tokenizer, "padding_side", "right") == "left"

    def collate(indices: list[int]) -> dict[str, torch.Tensor]:
        length = max(len(encoded["input_ids"][i]) for i in indices)
        batch = {}
        for key in keys:
            fill = tokenizer.pad_token_id if key == "input_ids" else 0
            rows = torch.full((len(indices), length), fill, dtype=torch.int64)  # (B, T)
            for row, i in enumerate(indices):
                values = torch.tensor(encoded[key][i], dtype=torch.int64)
                if left:
                    rows[row, length - len(values) :] = values
                else:
                    rows[row, : len(values)] = values
            batch[key] = rows
        if task == "seq-cls":
            batch["labels"] = torch.tensor([class_ids[i] for i in indices], dtype=torch.int64)
        else:
            padding = batch["attention_mask"] == 0  # (B, T)
            batch["labels"] = batch["input_ids"].masked_fill(padding, IGNORE_INDEX)
        return batch

    generator = torch.Generator().manual_seed(seed)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    sampler = (
        LengthBuckets(lengths, batch_size, generator)
        if shuffle
        else BatchSampler(SequentialSampler(range(len(texts))), batch_size, drop_last=False)
    )
    return DataLoader(list(range(len(texts))), batch_sampler=sampler, collate_fn=collate, num_workers=0)
