"""`client.run --runtime onnx`: the small-folder recipe (shared/recipe/) on onnxruntime + numpy.

    training folder (client.export --training) + data folder [+ start adapter] -> personal adapter

The same recipe as the PyTorch runtime (closed-form head start, validation, early stopping,
interpolation, --time-budget), the optimizer in numpy, and the same adapter file format: the
PyTorch path, client.export, client.predict and a federation read what this writes.
Imports onnxruntime, tokenizers, numpy, safetensors: never torch, transformers or datasets
(tests/test_onnx_training.py checks in a fresh interpreter).
"""

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from client.onnx_training.backend import OnnxBackend
from client.onnx_training.folder import FolderTokenizer, TrainingFolder, open_training_folder
from shared.artifacts.adapter_arrays import read_adapter_arrays, write_adapter
from shared.data.local_folder import FolderRows, read_local_rows
from shared.errors import LoraXSError
from shared.output_parts import OutputParts, parts_arrays
from shared.parts_report import held_out_lines, parts_lines
from shared.personal_parts import HeldOut, PartsChoice, joint_lexical, parts_after_recipe, parts_metadata
from shared.recipe.config import PersonalTrainingConfig

DEFAULT_OUT_NAME = "personal_adapter.safetensors"  # as client.personalization's
HEAD_NAMES = ("classifier.weight", "classifier.bias")
KEPT_EXTRA = ("pooling", "svd_method", "basis_dtype")  # describe the factors: carried to every adapter
LEXICAL_PREFIX = "lexical."


@dataclass(frozen=True)
class OnnxRunConfig:
    data_dir: Path
    model_dir: Path
    adapter: Path | None = None
    out: Path | None = None
    force: bool = False
    training: PersonalTrainingConfig = field(default_factory=PersonalTrainingConfig)
    seed: int = 0
    threads: int = 0
    progress: bool = True
    lexical: bool = True  # may add the lexical part (kept only when validation says so)
    calibrate: bool = True  # fit a temperature on validation

    def __post_init__(self):
        for name in ("data_dir", "model_dir", "adapter", "out"):
            value = getattr(self, name)
            object.__setattr__(self, name, Path(value).expanduser() if value else None)
        if not self.lexical and self.training.joint_lexical:  # no lexical part to train around
            object.__setattr__(self, "training", replace(self.training, joint_lexical=False))

    @property
    def out_path(self) -> Path:
        return self.out or self.data_dir / DEFAULT_OUT_NAME


@dataclass(frozen=True)
class OnnxRunResult:
    out: Path
    num_bytes: int
    recipe: object  # shared.recipe.recipe.RecipeResult
    meta: dict[str, str]  # the adapter file's metadata strings
    num_train: int
    seconds: dict[str, float]  # load / train / write
    parts: PartsChoice | None = None  # the lexical part and temperature, and why
    held_out: HeldOut | None = None  # the personal model (with its parts) on the test split


def check_output(out: Path, force: bool) -> None:
    if out.is_dir():
        raise LoraXSError(f"--out {out} is a folder; give a file name")
    if out.exists() and not force:
        raise LoraXSError(f"{out} already exists; pass --force to overwrite it")


def start_params(folder: TrainingFolder, rows: FolderRows, adapter: Path | None) -> tuple[dict, str]:
    """(params, start name): from the adapter file, or from scratch (R = 0; the recipe fits the head)."""
    layers, rank, hidden = folder.layers, folder.description["rank"], folder.description["hidden_size"]
    if adapter is None:
        return {
            "lora_R": np.zeros((len(layers), rank, rank), dtype=np.float32),
            "head_weight": np.zeros((len(rows.labels), hidden), dtype=np.float32),
            "head_bias": np.zeros(len(rows.labels), dtype=np.float32),
        }, "scratch"
    state, meta = read_adapter_arrays(adapter)
    state = {
        k: v for k, v in state.items() if not k.startswith(LEXICAL_PREFIX)
    }  # a personal start's parts: chosen anew
    if meta.get("basis_fingerprint") != json.dumps(folder.fingerprint):
        raise LoraXSError(
            f"{adapter} belongs to another basis than the training artifacts in {folder.path} "
            f"({folder.fingerprint[:12]}); export them for this adapter: client.export --training DIR --adapter FILE"
        )
    if meta.get("task") != json.dumps("seq-cls"):
        raise LoraXSError(f"{adapter} is not a classifier adapter (seq-cls)")
    try:
        labels = json.loads(meta.get("labels", "null"))
    except ValueError:
        labels = None
    if labels != rows.labels:
        raise LoraXSError(f"the labels of the data folder ({', '.join(rows.labels)}) do not match those of {adapter}")
    names = [f"{layer}.lora_R" for layer in layers]
    expected = {*names, *HEAD_NAMES}
    if set(state) != expected:
        odd = sorted(set(state) ^ expected)[0]
        raise LoraXSError(
            f"{adapter} does not fit these artifacts: tensor {odd} is {'unknown' if odd in state else 'missing'}"
        )
    params = {
        "lora_R": np.stack([state[n] for n in names]),
        "head_weight": state[HEAD_NAMES[0]],
        "head_bias": state[HEAD_NAMES[1]],
    }
    if params["lora_R"].shape != (len(layers), rank, rank) or params["head_weight"].shape != (len(labels), hidden):
        raise LoraXSError(f"{adapter} does not fit these artifacts (rank or hidden size differ)")
    return params, "the given adapter"


def adapter_state(folder: TrainingFolder, params: dict) -> dict[str, np.ndarray]:
    """Params -> the adapter file's tensors, named as the PyTorch model names them."""
    state = {f"{layer}.lora_R": params["lora_R"][i] for i, layer in enumerate(folder.layers)}
    state[HEAD_NAMES[0]], state[HEAD_NAMES[1]] = params["head_weight"], params["head_bias"]
    return state


def adapter_metadata(folder: TrainingFolder, labels: list[str], **extra: str) -> dict[str, str]:
    """The training folder's `AdapterMeta.to_strings()` with these labels and extra entries."""
    meta = dict(folder.description["adapter_meta"])
    try:
        given = json.loads(meta.get("extra", "{}"))
    except ValueError:
        given = {}
    kept = {k: str(v) for k, v in (given if isinstance(given, dict) else {}).items() if k in KEPT_EXTRA}
    meta["labels"] = json.dumps(list(labels))
    meta["extra"] = json.dumps({**{k: str(v) for k, v in extra.items()}, **kept})
    return meta


def personalize_onnx(config: OnnxRunConfig) -> OnnxRunResult:
    from shared.recipe.recipe import run_recipe

    began = time.monotonic()
    deadline = began + config.training.time_budget if config.training.time_budget else None
    out = config.out_path
    check_output(out, config.force)
    folder = open_training_folder(config.model_dir)
    if folder.description["task"] != "seq-cls":
        raise LoraXSError(
            f"{config.model_dir} holds {folder.description['task']} artifacts; the onnx runtime "
            "trains classifiers (seq-cls) only: use --runtime torch"
        )
    rows = read_local_rows(config.data_dir, seed=config.seed)
    start, start_name = start_params(folder, rows, config.adapter)
    backend = OnnxBackend(folder, threads=config.threads)
    backend.train_top_blocks(config.training.train_blocks)
    tokenize = FolderTokenizer(folder)
    loaded = time.monotonic()
    recipe = run_recipe(
        backend,
        tokenize,
        tokenize.pad_id,
        rows.train_texts,
        rows.train_labels,
        len(rows.labels),
        start,
        config.training,
        start_name=start_name,
        test=(rows.test_texts, rows.test_labels),
        progress=config.progress,
        deadline=deadline,
        length_limit=tokenize.limit,
        lexical_offsets=joint_lexical(tokenize.special_ids) if config.training.joint_lexical else None,
    )
    trained = time.monotonic()
    # the same parts as the PyTorch path, from the recipe's views
    choice, held = parts_after_recipe(recipe, tokenize.special_ids, config.lexical, config.calibrate)
    parts = choice.parts if choice is not None else OutputParts()
    meta = adapter_metadata(
        folder,
        rows.labels,
        kind="personal",
        started_from=config.adapter.name if config.adapter else "scratch",
        train_examples=str(len(rows.train_texts)),
        max_length=str(recipe.max_length),
        runtime="onnx",
        **parts_metadata(choice),
    )
    check_output(out, config.force)  # it may have appeared while training
    num_bytes = write_adapter(out, adapter_state(folder, recipe.params) | parts_arrays(parts), meta)
    seconds = {"load": loaded - began, "train": trained - loaded, "write": time.monotonic() - trained}
    return OnnxRunResult(out, num_bytes, recipe, meta, len(rows.train_texts), seconds, choice, held)


def report_lines(result: OnnxRunResult) -> list[str]:
    """What `client.run --runtime onnx` prints."""
    meta = {k: json.loads(v) for k, v in result.meta.items()}
    recipe, training = result.recipe, result.recipe.training
    shown = (lambda score: score) if recipe.measure == "accuracy" else (lambda score: -score)  # loss: lower is better
    lines = [
        f"runtime onnx: base model {meta['base_model']}, task {meta['task']}, rank {meta['rank']} "
        f"(basis {meta['basis_fingerprint'][:12]}), artifacts loaded in {result.seconds['load']:.1f} s",
        f"trained on {recipe.num_fit} of {result.num_train} examples ({recipe.num_val} held out for validation), "
        f"{recipe.max_length} tokens: {training.steps} steps in {training.seconds:.1f} s, mean loss {training.loss:.4f}",
        f"validation {recipe.measure}: start ({recipe.start}) {shown(recipe.start_score):.4f}; after each epoch "
        + ", ".join(f"{shown(score):.3f}" for score in recipe.history),
    ]
    if recipe.stopped_on_time:
        lines.append(
            f"stopped on time: the --time-budget ran out after {training.steps} steps; "
            "the best validated adapter so far is kept"
        )
    if recipe.improved:
        lines.append(
            f"kept epoch {recipe.best_epoch} (validation {recipe.measure} {shown(recipe.best_score):.4f}), "
            f"interpolation lam = {recipe.lam:g}"
        )
    else:
        lines.append(f"note: no epoch beat the start on validation; the adapter written is the start ({recipe.start})")
    lines += parts_lines(result.parts)
    if recipe.before is not None:
        held = result.held_out
        accuracy, loss = (held.accuracy, held.nll_after) if held else (recipe.after.accuracy, recipe.after.loss)
        lines += [
            f"held-out accuracy before: {recipe.before.accuracy:.4f} (loss {recipe.before.loss:.4f}, "
            f"{recipe.before.examples} examples)",
            f"held-out accuracy after:  {accuracy:.4f} (loss {loss:.4f})",
            f"baseline frozen features + logistic regression: {recipe.frozen_test.accuracy:.4f} on the same split",
        ]
        if held is not None:
            lines += held_out_lines(held, recipe.after.accuracy)
    lines.append(f"personal adapter: {result.num_bytes} bytes written to {result.out}")
    return lines
