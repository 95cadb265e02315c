"""Personalize an adapter on a device's own text folder, with no server.

Starts from a given adapter (e.g. the global one a federation produced) or from scratch,
trains the r x r matrices (and the head) on the folder's train split, evaluates on its test
split before and after, and writes a personal adapter atomically. Nothing in the data folder
changes except the output file and the `.loraxs/` state folder (cached factors).
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from shared.artifacts.adapter_file import AdapterMeta, adapter_meta, save_adapter
from shared.artifacts.blob import check_output_file
from shared.artifacts.cache import basis_cache_dirs, store_basis_somewhere
from shared.artifacts.open_adapter import check_labels, open_adapter, read_adapter
from shared.base_models import canonical_model_id, load_tokenizer, resolve_device
from shared.crypto.at_rest import KeySource
from shared.data.batches import DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH, make_loader
from shared.data.local_folder import infer_task, load_local_folder
from shared.data.text_splits import TASKS
from shared.errors import LoraXSError
from shared.loraxs.config import LoraXSConfig
from shared.loraxs.model import adapter_state
from shared.training import EvalResult, TrainConfig, TrainResult, evaluate, train

DEFAULT_OUT_NAME = "personal_adapter.safetensors"  # in the data folder itself (public: docs, tests)
ENCODER_MODEL_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "mpnet",
                       "deberta", "deberta-v2", "camembert", "modernbert"}  # no causal-lm training


@dataclass(frozen=True)
class PersonalizationConfig:
    """One local personalization run.

    adapter:    start from this adapter file (its model, rank, targets, task and labels rule);
                None = from scratch with `model`, `rank` and the folder's labels.
    basis_file: the factor bundle a server shipped; else the cache, else an SVD of the model.
    out:        where the personal adapter goes (None = <data_dir>/personal_adapter.safetensors);
                an existing file is replaced only with `force`.
    model, rank, task: None = from the adapter, else the packaged MiniLM, LoraXSConfig's rank, and
                seq-cls unless the folder holds only *.txt files (causal-lm).
    """

    data_dir: Path
    adapter: Path | None = None
    basis_file: Path | None = None
    out: Path | None = None
    force: bool = False
    model: str | None = None
    rank: int | None = None
    task: str | None = None
    epochs: float = TrainConfig.epochs
    lr: float = TrainConfig.lr
    head_lr: float | None = TrainConfig.head_lr
    batch_size: int = DEFAULT_BATCH_SIZE
    max_length: int = DEFAULT_MAX_LENGTH
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    key_source: KeySource | None = None  # reads an encrypted adapter
    encrypt_at_rest: bool = False  # writes the personal adapter encrypted with key_source

    def __post_init__(self):
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        for name in ("adapter", "basis_file", "out"):
            value = getattr(self, name)
            object.__setattr__(self, name, Path(value).expanduser() if value else None)
        if self.rank is not None and self.rank < 1:
            raise LoraXSError(f"--rank must be a positive integer, got {self.rank}")
        if self.task is not None and self.task not in TASKS:
            raise LoraXSError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not 0 <= self.seed < 2**32:
            raise LoraXSError(f"--seed must be in [0, 2**32 - 1], got {self.seed}")
        if self.batch_size < 1:
            raise LoraXSError(f"--batch-size must be positive, got {self.batch_size}")
        if self.max_length < 2:
            raise LoraXSError(f"--max-length must be at least 2, got {self.max_length}")
        if not self.epochs > 0:
            raise LoraXSError(f"--epochs must be positive, got {self.epochs}")

    @property
    def out_path(self) -> Path:
        return self.out or self.data_dir / DEFAULT_OUT_NAME


@dataclass(frozen=True)
class PersonalizationResult:
    out: Path
    num_bytes: int
    before: EvalResult
    after: EvalResult
    training: TrainResult
    meta: AdapterMeta
    factors_source: str
    num_train: int


def personalize(config: PersonalizationConfig) -> PersonalizationResult:
    out = config.out_path
    check_output_file(out, config.force)
    start = read_adapter(config.adapter, config.model, config.rank, config.task,
                         config.key_source) if config.adapter else None
    task = start.meta.task if start else config.task or infer_task(config.data_dir)
    splits = load_local_folder(config.data_dir, task=task, seed=config.seed)
    if start:
        check_labels(start, splits, config.data_dir)
    device = resolve_device(config.device)
    opened = open_adapter(
        start, base_model=config.model, task=task, labels=splits.labels,
        lora=LoraXSConfig(rank=config.rank) if config.rank else None,
        basis_file=config.basis_file, data_dir=config.data_dir, seed=config.seed,
    )
    model, basis, lora, labels = opened.model, opened.basis, opened.lora, opened.labels
    model_id = canonical_model_id(start.meta.base_model if start else config.model)
    if task == "causal-lm" and model.config.model_type in ENCODER_MODEL_TYPES:
        raise LoraXSError(f"{model_id} is an encoder ({model.config.model_type}) model and cannot be trained as a "
                          f"causal LM (the task of a folder of *.txt files); use *.jsonl / *.csv with labels, "
                          "or --model with a causal LM")
    store_basis_somewhere(basis_cache_dirs(config.data_dir), basis, model_id)  # a read-only folder: user cache

    tokenizer = load_tokenizer(model_id)
    train_loader = make_loader(
        splits.train, tokenizer, task, config.batch_size, config.max_length, shuffle=True, seed=config.seed
    )
    test_loader = make_loader(splits.test, tokenizer, task, config.batch_size, config.max_length)
    before = evaluate(model, test_loader, device)
    torch.manual_seed(config.seed)  # dropout
    training = train(
        model, train_loader, TrainConfig(epochs=config.epochs, lr=config.lr, head_lr=config.head_lr),
        device, progress=config.progress, desc="personalize",
    )
    after = evaluate(model, test_loader, device)

    meta = adapter_meta(
        model_id, task, lora, basis, labels, kind="personal",
        started_from=config.adapter.name if config.adapter else "scratch",
        train_examples=str(len(splits.train)),
    )
    check_output_file(out, config.force)  # it may have appeared while training
    num_bytes = save_adapter(out, adapter_state(model), meta, config.key_source if config.encrypt_at_rest else None)
    return PersonalizationResult(
        out=out, num_bytes=num_bytes, before=before, after=after, training=training,
        meta=meta, factors_source=opened.factors_source, num_train=len(splits.train),
    )
