"""Personalize an adapter on a device's own text folder, with no server.

Starts from a given adapter (e.g. the global one a federation produced) or from scratch,
trains the r x r matrices (and the head) on the folder's train split, evaluates on its test
split before and after, and writes a personal adapter atomically. Nothing in the data folder
changes except the output file and the `.loraxs/` state folder (cached factors).
"""

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from shared.artifacts.adapter_file import AdapterMeta, adapter_meta, adapter_to_bytes, save_adapter
from shared.artifacts.blob import check_output_file
from shared.artifacts.cache import basis_cache_dirs, store_basis_somewhere
from shared.artifacts.open_adapter import check_labels, nested_adapter, open_adapter, read_adapter
from shared.base_models import canonical_model_id, load_tokenizer, resolve_device
from shared.crypto.at_rest import KeySource
from shared.data.batches import EVAL_BATCH_SIZE, make_loader
from shared.data.local_folder import infer_task, load_local_folder
from shared.data.text_splits import TASKS
from shared.errors import LoraXSError
from shared.linear_probe import linear_head
from shared.loraxs.config import LoraXSConfig
from shared.loraxs.model import adapter_state
from shared.output_parts import OutputParts
from shared.personal_output import parts_state
from shared.personal_parts import HeldOut, PartsChoice, parts_after_recipe, parts_metadata
from shared.personal_training import (
    PersonalTrainingConfig,
    PersonalTrainingResult,
    choose_max_length,
    personal_training,
)
from shared.recipe.recipe import RecipeResult
from shared.training import EvalResult, evaluate

DEFAULT_OUT_NAME = "personal_adapter.safetensors"  # in the data folder itself (public: docs, tests)
ENCODER_MODEL_TYPES = {
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
    "albert",
    "electra",
    "mpnet",
    "deberta",
    "deberta-v2",
    "camembert",
    "modernbert",
}  # no causal-lm training


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
    training: PersonalTrainingConfig = field(default_factory=PersonalTrainingConfig)
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    lexical: bool = True  # seq-cls: may add the lexical part (kept only when validation says so)
    calibrate: bool = True  # seq-cls: fit a temperature on validation
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
        if not self.lexical and self.training.joint_lexical:  # no lexical part to train around
            object.__setattr__(self, "training", replace(self.training, joint_lexical=False))

    @property
    def out_path(self) -> Path:
        return self.out or self.data_dir / DEFAULT_OUT_NAME


@dataclass(frozen=True)
class PersonalizationResult:
    out: Path
    num_bytes: int
    before: EvalResult  # the start adapter as given (from scratch: an untrained head)
    after: EvalResult
    baselines: dict[str, EvalResult]  # name -> held-out result, on the same split
    recipe: PersonalTrainingResult | RecipeResult
    meta: AdapterMeta
    factors_source: str
    num_train: int
    after_encoder: EvalResult | None = None  # the trained encoder alone (no lexical part, no temperature)
    parts: PartsChoice | None = None  # the lexical part and temperature, and why
    calibration: HeldOut | None = (
        None  # the personal model on the test split: NLL / ECE before and after its temperature
    )
    encoder_bytes: int = 0  # the same adapter file without the lexical part and temperature (plain, unencrypted)


def personalize(config: PersonalizationConfig) -> PersonalizationResult:
    began = time.monotonic()  # --time-budget counts from here
    deadline = began + config.training.time_budget if config.training.time_budget else None
    out = config.out_path
    check_output_file(out, config.force)
    start = (
        read_adapter(config.adapter, config.model, config.rank, config.task, config.key_source)
        if config.adapter
        else None
    )
    task = start.meta.task if start else config.task or infer_task(config.data_dir)
    splits = load_local_folder(config.data_dir, task=task, seed=config.seed)
    if start:
        check_labels(start, splits, config.data_dir)
    device = resolve_device(config.device)
    nested = None
    if start and config.rank and config.rank < start.meta.rank:  # mixed ranks: train the top-left block
        start, nested = nested_adapter(start, config.rank, config.basis_file, config.data_dir)
    opened = open_adapter(
        start,
        base_model=config.model,
        task=task,
        labels=splits.labels,
        lora=LoraXSConfig(rank=config.rank) if config.rank else None,
        basis=nested,
        basis_file=config.basis_file,
        data_dir=config.data_dir,
        seed=config.seed,
    )
    model, basis, lora, labels = opened.model, opened.basis, opened.lora, opened.labels
    model_id = canonical_model_id(start.meta.base_model if start else config.model)
    if task == "causal-lm" and model.config.model_type in ENCODER_MODEL_TYPES:
        raise LoraXSError(
            f"{model_id} is an encoder ({model.config.model_type}) model and cannot be trained as a "
            f"causal LM (the task of a folder of *.txt files); use *.jsonl / *.csv with labels, "
            "or --model with a causal LM"
        )
    store_basis_somewhere(basis_cache_dirs(config.data_dir), basis, model_id)  # a read-only folder: user cache

    tokenizer = load_tokenizer(model_id)
    start_name = "the given adapter" if config.adapter else "scratch"
    test_loader = lambda length: make_loader(splits.test, tokenizer, task, EVAL_BATCH_SIZE, length)
    choice = held = None
    if task == "seq-cls" and linear_head(model) is not None:  # the numpy recipe reports on the test split itself
        recipe = personal_training(
            model,
            splits.train,
            tokenizer,
            task,
            config.training,
            device,
            start=start_name,
            progress=config.progress,
            test_set=splits.test,
            deadline=deadline,
        )
        before, after = recipe.before, recipe.after
        baselines = {"frozen features + logistic regression": recipe.frozen_test}
        choice, held = parts_after_recipe(recipe, set(tokenizer.all_special_ids), config.lexical, config.calibrate)
    else:
        before = evaluate(
            model, test_loader(choose_max_length(splits.train["text"], tokenizer, config.training, model)), device
        )
        recipe = personal_training(
            model, splits.train, tokenizer, task, config.training, device, start=start_name, progress=config.progress
        )
        after, baselines = evaluate(model, test_loader(recipe.max_length), device), {}
    after_encoder = after
    parts = choice.parts if choice is not None else OutputParts()
    if held is not None and not parts.empty:  # the personal model, on the test features the recipe already has
        after = EvalResult(loss=held.nll_after, accuracy=held.accuracy, examples=held.examples)
    if config.adapter:
        baselines["the given adapter"] = before

    meta = adapter_meta(
        model_id,
        task,
        lora,
        basis,
        labels,
        kind="personal",
        started_from=config.adapter.name if config.adapter else "scratch",
        train_examples=str(len(splits.train)),
        max_length=str(recipe.max_length),
        **parts_metadata(choice),
    )
    check_output_file(out, config.force)  # it may have appeared while training
    state = adapter_state(model) | parts_state(parts)
    plain = replace(
        meta, extra={k: v for k, v in meta.extra.items() if k not in ("lexical_ids", "lexical_mix", "temperature")}
    )
    encoder_bytes = len(adapter_to_bytes(adapter_state(model), plain))
    num_bytes = save_adapter(out, state, meta, config.key_source if config.encrypt_at_rest else None)
    return PersonalizationResult(
        out=out,
        num_bytes=num_bytes,
        before=before,
        after=after,
        baselines=baselines,
        recipe=recipe,
        meta=meta,
        factors_source=opened.factors_source,
        num_train=len(splits.train),
        after_encoder=after_encoder,
        parts=choice,
        calibration=held,
        encoder_bytes=encoder_bytes,
    )
