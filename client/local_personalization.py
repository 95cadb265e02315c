"""Personalize an adapter on a device's own text folder, with no server.

Starts from a given adapter (e.g. the global one a federation produced) or from scratch,
trains the r x r matrices (and the head) on the folder's train split, evaluates on its test
split before and after, and writes a personal adapter atomically. Nothing in the data folder
changes except the output file and the `.loraxs/` state folder (cached factors).
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from client.basis_cache import STATE_FOLDER, check_fingerprint, resolve_basis, store_basis
from shared.adapted_model import adapter_meta, build_adapted_model
from shared.adapter_file import AdapterMeta, check_adapter_matches, load_adapter, save_adapter
from shared.basis_file import load_basis
from shared.data.batches import make_loader
from shared.data.local_folder import SUPPORTED_SUFFIXES, load_local_folder
from shared.data.text_splits import TASKS, TextSplits
from shared.errors import LoraXSError
from shared.loraxs.basis import Basis
from shared.loraxs.config import LoraXSConfig
from shared.loraxs.model import adapter_state, load_adapter_state
from shared.models import canonical_model_id, load_tokenizer, resolve_device
from shared.training import EvalResult, TrainConfig, TrainResult, evaluate, train

DEFAULT_OUT_NAME = "personal_adapter.safetensors"  # in the data folder itself
DEFAULT_RANK = 16


@dataclass(frozen=True)
class PersonalizationConfig:
    """One local personalization run.

    adapter:    start from this adapter file (its model, rank, targets, task and labels rule);
                None = from scratch with `model`, `rank` and the folder's labels.
    basis_file: the factor bundle a server shipped; else the cache, else an SVD of the model.
    out:        where the personal adapter goes (None = <data_dir>/personal_adapter.safetensors);
                an existing file is replaced only with `force`.
    model, rank, task: None = from the adapter, else the packaged MiniLM, rank 16, and
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
    epochs: float = 1.0
    lr: float = 2e-3
    head_lr: float | None = None
    batch_size: int = 16
    max_length: int = 64
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self):
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        for name in ("adapter", "basis_file", "out"):
            value = getattr(self, name)
            object.__setattr__(self, name, Path(value).expanduser() if value else None)
        if self.rank is not None and self.rank < 1:
            raise LoraXSError(f"--rank must be a positive integer, got {self.rank}")
        if self.task is not None and self.task not in TASKS:
            raise LoraXSError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
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


def infer_task(data_dir: Path) -> str:
    """causal-lm when the folder holds *.txt files and no *.jsonl / *.csv, else seq-cls."""
    if not data_dir.is_dir():
        return "seq-cls"  # loading the folder reports what is wrong with it
    suffixes = {p.suffix.lower() for p in data_dir.iterdir() if p.is_file()}
    if ".txt" in suffixes and not suffixes & set(SUPPORTED_SUFFIXES["seq-cls"]):
        return "causal-lm"
    return "seq-cls"


def check_output_path(out: Path, force: bool) -> None:
    if out.is_dir():
        raise LoraXSError(f"--out {out} is a directory; give a file name")
    if out.exists() and not force:
        raise LoraXSError(f"{out} already exists; pass --force to overwrite it")


def _start_adapter(config: PersonalizationConfig) -> tuple[dict | None, AdapterMeta | None]:
    """The adapter to start from, checked against the flags that must agree with it."""
    if config.adapter is None:
        return None, None
    state, meta = load_adapter(config.adapter)
    if config.model is not None and canonical_model_id(config.model) != meta.base_model:
        raise LoraXSError(
            f"{config.adapter} was trained on base model {meta.base_model!r}, "
            f"but --model is {canonical_model_id(config.model)!r}"
        )
    if config.rank is not None and config.rank != meta.rank:
        raise LoraXSError(f"{config.adapter} has rank {meta.rank}, but --rank is {config.rank}")
    if config.task is not None and config.task != meta.task:
        raise LoraXSError(f"{config.adapter} is for task {meta.task}, but --task is {config.task}")
    return state, meta


def check_labels(splits: TextSplits, meta: AdapterMeta, data_dir: Path, adapter: Path) -> None:
    folder = tuple(splits.labels or ())
    expected = tuple(meta.labels or ())
    if folder != expected:
        raise LoraXSError(
            f"the labels of {data_dir} ({', '.join(folder)}) do not match those of "
            f"{adapter} ({', '.join(expected)})"
        )


def _shipped_basis(path: Path, model_id: str, fingerprint: str | None) -> Basis:
    """The factor bundle a server shipped: it must be for this base model and this adapter."""
    basis, base_model = load_basis(path)
    if base_model and base_model != model_id:
        raise LoraXSError(f"basis file {path} holds factors of base model {base_model!r}, not {model_id!r}")
    check_fingerprint(basis, fingerprint, f"basis file {path}")
    return basis


def _factors(config: PersonalizationConfig, model_id: str, fingerprint: str | None) -> tuple[Basis | None, str]:
    """(factors, where they came from); None = compute them from the base model."""
    if config.basis_file:
        return _shipped_basis(config.basis_file, model_id, fingerprint), f"basis file {config.basis_file}"
    basis = resolve_basis(fingerprint, None, config.data_dir)
    return basis, "the local cache" if basis is not None else "an SVD of the base model"


def personalize(config: PersonalizationConfig) -> PersonalizationResult:
    out = config.out_path
    check_output_path(out, config.force)
    state, start = _start_adapter(config)
    task = start.task if start else config.task or infer_task(config.data_dir)
    splits = load_local_folder(config.data_dir, task=task, seed=config.seed)
    if start and task == "seq-cls":
        check_labels(splits, start, config.data_dir, config.adapter)
    labels = list(start.labels) if start and start.labels else splits.labels
    device = resolve_device(config.device)

    model_id = start.base_model if start else canonical_model_id(config.model)
    fingerprint = start.basis_fingerprint if start else None
    basis, factors_source = _factors(config, model_id, fingerprint)
    if start:
        lora = LoraXSConfig(rank=start.rank, alpha=start.alpha, target_modules=start.targets)
    else:
        lora = LoraXSConfig(rank=config.rank or (basis.rank if basis is not None else DEFAULT_RANK))
    computed = basis is None
    model, basis = build_adapted_model(model_id, task, lora, labels=labels, basis=basis, seed=config.seed)
    if computed:
        check_fingerprint(basis, fingerprint, "the factors computed from the base model")
    if start:
        check_adapter_matches(start, str(config.adapter), model_id, basis.fingerprint)
        load_adapter_state(model, state)
    store_basis(config.data_dir / STATE_FOLDER / "basis", basis, model_id)

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
    check_output_path(out, config.force)  # it may have appeared while training
    num_bytes = save_adapter(out, adapter_state(model), meta)
    return PersonalizationResult(
        out=out, num_bytes=num_bytes, before=before, after=after, training=training,
        meta=meta, factors_source=factors_source, num_train=len(splits.train),
    )
