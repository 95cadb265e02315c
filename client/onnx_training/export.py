"""Training artifacts for a device: one folder per base model + factors + rank, written by
`python -m client.export --training DIR`.

    train_step.onnx      loss and the gradients of every R and the head (step_graph.py)
    features.onnx        the pooled features the head sees
    lower.onnx           the hidden states entering the top `train_blocks` blocks (split_graph.py)
    upper_step.onnx      loss and gradients of the top blocks' R and the head, from those states
    upper_features.onnx  the pooled features, from those states
    frozen_weights.data  the base weights and SVD factors of every graph, each stored once
    tokenizer.json, tokenizer_config.json
    training.json        how to feed the graphs, the adapter metadata, a sha256 of every file

The factors come from the adapter (`--adapter`: its base model, rank, targets, fingerprint) or
from `--model` / `--rank` (the cache, else a fresh SVD); R and the head are graph inputs, so one
folder serves every user of those factors. The split graphs are written for the recipe's
`train_blocks` (`--train-blocks`), where the model splits; the full graphs serve any other
value. Every graph is checked against PyTorch before
anything is written; files are staged and moved into place all or nothing.
"""

import contextlib
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from client.onnx.folder import move_into_place
from client.onnx.graph import token_input_names
from client.onnx_training.folder import sha256_file
from client.onnx_training.shared_weights import share_weights
from client.onnx_training.split_graph import (
    HIDDEN,
    UPPER_FEATURE_OUTPUT,
    UPPER_STEP_OUTPUTS,
    SplitFunctions,
    SplitLayout,
    lower_input_names,
    split_dynamic_axes,
    split_examples,
    split_layout,
    upper_feature_input_names,
    upper_step_input_names,
)
from client.onnx_training.step_graph import (
    CAUSAL_OUTPUTS,
    FEATURE_OUTPUT,
    STEP_OUTPUTS,
    causal_input_names,
    check_exportable,
    dynamic_axes,
    example_inputs,
    export_function,
    head_removed,
    step_functions,
    step_input_names,
)
from shared.artifacts.adapter_file import AdapterMeta, adapter_meta
from shared.artifacts.open_adapter import open_adapter, read_adapter
from shared.base_models import canonical_model_id, load_tokenizer
from shared.data.batches import IGNORE_INDEX
from shared.errors import LoraXSError
from shared.loraxs.config import LoraXSConfig
from shared.personal_training import model_length_limit
from shared.recipe.config import PersonalTrainingConfig

DESCRIPTION = "training.json"
FORMAT, FORMAT_VERSION = "loraxs-onnx-training", "1"
FILES = {
    "step": "train_step.onnx",
    "features": "features.onnx",
    "lower": "lower.onnx",
    "upper_step": "upper_step.onnx",
    "upper_features": "upper_features.onnx",
    "weights": "frozen_weights.data",
}
GRAPHS = ("step", "features", "lower", "upper_step", "upper_features")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
GRAD_TOLERANCE = 1e-4  # max abs difference of loss, gradients and features against PyTorch
CHECK_SHAPES = ((3, 17), (2, 6))  # (batch, length) of the parity check: not the trace shape


@dataclass(frozen=True)
class TrainingExportConfig:
    out_dir: Path
    adapter: Path | None = None
    model: str | None = None
    rank: int | None = None
    task: str = "seq-cls"
    basis_file: Path | None = None
    opset: int | None = None
    force: bool = False
    train_blocks: int | None = PersonalTrainingConfig().train_blocks  # the split; None: full graphs only
    key_source: object = field(default=None, repr=False)

    def __post_init__(self):
        for name in ("out_dir", "adapter", "basis_file"):
            value = getattr(self, name)
            object.__setattr__(self, name, Path(value).expanduser() if value else None)
        if self.rank is not None and self.rank < 1:
            raise LoraXSError(f"--rank must be a positive integer, got {self.rank}")
        if self.adapter is not None and self.rank is not None:
            raise LoraXSError("--rank: the adapter's rank rules; pass one of --adapter and --rank")
        if self.train_blocks is not None and self.train_blocks < 1:
            raise LoraXSError(f"--train-blocks must be a positive integer, got {self.train_blocks}")


@dataclass
class TrainingExport:
    folder: Path
    meta: AdapterMeta
    factors_source: str
    files: dict[str, Path]
    diffs: dict[str, float]  # what was compared -> max abs difference
    opset: int


def _step(message: str) -> None:
    print(f"export: {message}", file=sys.stderr, flush=True)


def run_training_export(config: TrainingExportConfig) -> TrainingExport:
    folder = config.out_dir
    if folder.exists() and not folder.is_dir():
        raise LoraXSError(f"--training {folder} is not a folder")
    if (folder / DESCRIPTION).exists() and not config.force:
        raise LoraXSError(f"{folder} already holds training artifacts; pass --force to replace them")
    adapter = read_adapter(config.adapter, model=config.model, key_source=config.key_source) if config.adapter else None
    task = adapter.meta.task if adapter else config.task
    _step("loading the base model and its factors")
    opened = open_adapter(
        adapter,
        base_model=config.model,
        task=task,
        lora=LoraXSConfig(rank=config.rank) if config.rank else None,
        basis_file=config.basis_file,
    )
    model = opened.model
    check_exportable(model, task)
    model_id = canonical_model_id(adapter.meta.base_model if adapter else config.model)
    meta = adapter.meta if adapter else adapter_meta(model_id, task, opened.lora, opened.basis, None)
    tokenizer = load_tokenizer(model_id)
    token_names = token_input_names(model, tokenizer) if task == "seq-cls" else ["input_ids", "attention_mask"]
    folder.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".training-", dir=folder))
    try:
        layout = split_layout(model, config.train_blocks) if task == "seq-cls" else None
        files, diffs, opset = _export_graphs(model, task, token_names, stage, config.opset, layout)
        for saved in tokenizer.save_pretrained(stage):
            if Path(saved).name in TOKENIZER_FILES:
                files[Path(saved).name] = stage / Path(saved).name
        if "tokenizer.json" not in files:
            raise LoraXSError(f"{model_id} has no fast tokenizer (tokenizer.json): a device could not tokenize")
        files["description"] = stage / DESCRIPTION
        files["description"].write_text(
            json.dumps(_describe(model, meta, task, token_names, tokenizer, opset, files, diffs, layout), indent=2)
            + "\n"
        )
        move_into_place(files, folder, config.adapter or stage)  # never overwrite the adapter
        return TrainingExport(folder, meta, opened.factors_source, files, diffs, opset)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _export_graphs(
    model, task: str, token_names: list[str], stage: Path, opset: int | None, layout: SplitLayout | None
):
    functions = step_functions(model, token_names)
    example = example_inputs(model, token_names)
    files = {kind: stage / FILES[kind] for kind in ("step", "features")}
    causal = task == "causal-lm"
    if causal:
        step_names, step_outputs, step_fn = causal_input_names(), list(CAUSAL_OUTPUTS), functions.causal_step
        example["labels"] = torch.where(example["attention_mask"] > 0, example["input_ids"], IGNORE_INDEX)
    else:
        step_names, step_outputs, step_fn = step_input_names(token_names), list(STEP_OUTPUTS), functions.step
    feature_names = ["lora_R", *token_names]
    with contextlib.nullcontext() if causal else head_removed(model):
        _step(f"exporting the training step to {FILES['step']}")
        written = export_function(
            step_fn,
            tuple(example[n] for n in step_names),
            step_names,
            step_outputs,
            dynamic_axes(token_names, causal),
            files["step"],
            opset,
            model,
        )
        if causal:
            del files["features"]
        else:
            _step(f"exporting the feature pass to {FILES['features']}")
            export_function(
                functions.features,
                tuple(example[n] for n in feature_names),
                feature_names,
                [FEATURE_OUTPUT],
                dynamic_axes(token_names),
                files["features"],
                opset,
                model,
            )
    split = SplitFunctions(model, layout, token_names) if layout else None
    if split:
        _export_split(split, example, stage, files, opset)
    graphs = [files[kind] for kind in GRAPHS if kind in files]
    files["weights"] = stage / FILES["weights"]
    share_weights(graphs, FILES["weights"])
    _step(f"checking {'every graph' if split else 'both graphs'} against PyTorch")
    diffs = check_parity(functions, files, step_names, feature_names, causal)
    if split:
        diffs |= check_split_parity(functions, split, files)
    return files, diffs, written


def _export_split(split: SplitFunctions, example: dict, stage: Path, files: dict[str, Path], opset: int | None) -> None:
    """The lower graph and the two upper graphs of `split.layout` into `stage`."""
    example = split_examples(split, example)
    axes = split_dynamic_axes(split.token_names)
    for kind, function, names, outputs in (
        ("lower", split.lower, lower_input_names(split.token_names), [HIDDEN]),
        ("upper_step", split.upper_step, upper_step_input_names(), list(UPPER_STEP_OUTPUTS)),
        ("upper_features", split.upper_features, upper_feature_input_names(), [UPPER_FEATURE_OUTPUT]),
    ):
        _step(
            f"exporting the {kind.replace('_', ' ')} graph to {FILES[kind]} "
            f"(the top {split.layout.train_blocks} of {split.layout.blocks} blocks train)"
        )
        files[kind] = stage / FILES[kind]
        export_function(
            function, tuple(example[n] for n in names), names, outputs, axes, files[kind], opset, split.model
        )


def check_parity(
    functions, files: dict[str, Path], step_names: list[str], feature_names: list[str], causal: bool
) -> dict[str, float]:
    """ORT vs PyTorch eager on shapes other than the trace's; LoraXSError above GRAD_TOLERANCE."""
    import onnxruntime as ort

    model = functions.model
    sessions = {
        kind: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for kind, path in files.items()
        if kind in ("step", "features")
    }
    worst: dict[str, float] = {}
    for seed, (batch, length) in enumerate(CHECK_SHAPES, start=1):
        inputs = example_inputs(model, functions.token_names, batch=batch, length=length, seed=seed)
        if causal:
            inputs["labels"] = torch.where(inputs["attention_mask"] > 0, inputs["input_ids"], IGNORE_INDEX)
            expected = functions.causal_step(*(inputs[n].clone() for n in step_names))
        else:
            with head_removed(model):
                expected = functions.step(*(inputs[n].clone() for n in step_names))
        got = sessions["step"].run(None, {n: inputs[n].numpy() for n in step_names})
        names = CAUSAL_OUTPUTS if causal else STEP_OUTPUTS
        for name, want, have in zip(names, expected, got):
            worst[name] = max(worst.get(name, 0.0), _max_diff(want, have))
        if not causal:
            with head_removed(model), torch.no_grad():
                want = functions.features(*(inputs[n] for n in feature_names))
            have = sessions["features"].run(None, {n: inputs[n].numpy() for n in feature_names})[0]
            worst[FEATURE_OUTPUT] = max(worst.get(FEATURE_OUTPUT, 0.0), _max_diff(want, have))
    for name, diff in worst.items():
        if not diff <= GRAD_TOLERANCE:  # NaN fails too
            raise LoraXSError(
                f"onnxruntime {name} differs from PyTorch by {diff:.3g} (limit {GRAD_TOLERANCE:g}); nothing was written"
            )
    return worst


def check_split_parity(functions, split: SplitFunctions, files: dict[str, Path]) -> dict[str, float]:
    """The lower graph chained into the upper ones (onnxruntime) against PyTorch eager's whole
    model: loss, the top R's gradients, the head's, the features. LoraXSError above GRAD_TOLERANCE."""
    import onnxruntime as ort

    model, layout = functions.model, split.layout
    sessions = {
        kind: ort.InferenceSession(str(files[kind]), providers=["CPUExecutionProvider"])
        for kind in ("lower", "upper_step", "upper_features")
    }
    worst: dict[str, float] = {}
    for seed, (batch, length) in enumerate(CHECK_SHAPES, start=1):
        inputs = {
            k: v.numpy()
            for k, v in example_inputs(model, functions.token_names, batch=batch, length=length, seed=seed).items()
        }
        hidden = sessions["lower"].run(
            None,
            {"lora_R_lower": inputs["lora_R"][layout.lower_layers], **{n: inputs[n] for n in functions.token_names}},
        )[0]
        upper = {
            "lora_R_upper": inputs["lora_R"][layout.upper_layers],
            HIDDEN: hidden,
            "attention_mask": inputs["attention_mask"],
        }
        got = sessions["upper_step"].run(
            None, upper | {k: inputs[k] for k in ("head_weight", "head_bias", "labels", "logit_offset")}
        )
        with head_removed(model):
            expected = functions.step(
                *(torch.from_numpy(inputs[n]).clone() for n in step_input_names(functions.token_names))
            )
            with torch.no_grad():
                features = functions.features(
                    *(torch.from_numpy(inputs[n]) for n in ["lora_R", *functions.token_names])
                )
        expected = [expected[0], expected[1][layout.upper_layers], *expected[2:]]
        for name, want, have in zip(UPPER_STEP_OUTPUTS, expected, got):
            worst[f"split {name}"] = max(worst.get(f"split {name}", 0.0), _max_diff(want, have))
        have = sessions["upper_features"].run(None, upper)[0]
        worst["split features"] = max(worst.get("split features", 0.0), _max_diff(features, have))
    for name, diff in worst.items():
        if not diff <= GRAD_TOLERANCE:  # NaN fails too
            raise LoraXSError(
                f"onnxruntime {name} differs from PyTorch by {diff:.3g} (limit {GRAD_TOLERANCE:g}); nothing was written"
            )
    return worst


def _max_diff(want: torch.Tensor, have: np.ndarray) -> float:
    want = want.detach().double().numpy()
    if want.shape != have.shape:
        return float("nan")
    return float(np.abs(want - have.astype(np.float64)).max()) if want.size else 0.0


def _describe(
    model,
    meta: AdapterMeta,
    task: str,
    token_names: list[str],
    tokenizer,
    opset: int,
    files: dict[str, Path],
    diffs: dict[str, float],
    layout: SplitLayout | None = None,
) -> dict:
    from shared.loraxs.model import adapted_layers

    layers = adapted_layers(model)
    first = next(iter(layers.values()))
    head = getattr(model, "classifier", None)
    described = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "base_model": meta.base_model,
        "task": task,
        "labels": list(meta.labels) if meta.labels else None,
        "rank": meta.rank,
        "alpha": meta.alpha,
        "scale": first.scale,
        "targets": list(meta.targets),
        "layers": list(layers),  # the rows of the stacked lora_R, in order
        "hidden_size": int(head.in_features) if head is not None else int(model.config.hidden_size),
        "basis_fingerprint": meta.basis_fingerprint,
        "adapter_meta": meta.to_strings(),  # what an adapter trained here carries (labels, extra filled in)
        "token_inputs": token_names,
        "pad_token": tokenizer.pad_token,
        "max_length_limit": model_length_limit(tokenizer, model),
        "opset": opset,
        "graphs": {kind: FILES[kind] for kind in GRAPHS if kind in files},
        "weights": FILES["weights"],
        "inputs": {
            "step": causal_input_names() if task == "causal-lm" else step_input_names(token_names),
            "features": ["lora_R", *token_names],
        },
        "outputs": {
            "step": list(CAUSAL_OUTPUTS if task == "causal-lm" else STEP_OUTPUTS),
            "features": [FEATURE_OUTPUT],
        },
        "shapes": {
            "lora_R": [len(layers), meta.rank, meta.rank],
            "head_weight": ["label", int(head.in_features)] if head is not None else None,
        },
        "dropout": False,
        "parity_max_abs": diffs,
        "files": {path.name: sha256_file(path) for kind, path in files.items() if kind != "description"},
    }
    if layout is not None:  # a folder without "split" trains through the full graphs alone
        described["split"] = layout.describe()
        described["inputs"] |= {
            "lower": lower_input_names(token_names),
            "upper_step": upper_step_input_names(),
            "upper_features": upper_feature_input_names(),
        }
        described["outputs"] |= {
            "lower": [HIDDEN],
            "upper_step": list(UPPER_STEP_OUTPUTS),
            "upper_features": [UPPER_FEATURE_OUTPUT],
        }
    return described
