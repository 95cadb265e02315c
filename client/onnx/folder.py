"""What an export leaves in its folder for a device: the ONNX files, the tokenizer, and
`<stem>.export.json` saying how to feed the graphs and read their output."""

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from client.onnx.graph import OUTPUT_NAME, TOKEN_AXES
from client.onnx.onnx_adapter import CHECKSUM_SUFFIX, basis_version
from shared.artifacts.adapter_file import AdapterMeta
from shared.errors import LoraXSError
from shared.signals import signals_deferred

MODEL_KINDS = ("fp32", "int8", "adapter-input", "adapter-base")
SIDECARS = (".data", CHECKSUM_SUFFIX)  # files that travel with a model (external weights) or an adapter
DESCRIPTION_FORMAT, DESCRIPTION_VERSION = "loraxs-onnx-export", "1"


def describe_export(
    meta: AdapterMeta,
    token_names: list[str],
    opset: int,
    max_length: int,
    models: dict[str, str],
    adapter_inputs: dict[str, torch.Tensor] | None,
    adapter_file: str,
    onnx_adapter: str | None = None,
    max_positions: int | None = None,
    onnx_adapter_sha256: str | None = None,
) -> dict:
    """models: kind -> file name; adapter_inputs: the adapter parameters the adapter-as-input graph
    takes as inputs and the base graph as overridable initializers; onnx_adapter: the
    `.onnx_adapter` file written for this adapter."""
    output_axes = ["batch", "label"] if meta.task == "seq-cls" else [*TOKEN_AXES, "vocab"]
    description = {
        "format": DESCRIPTION_FORMAT,
        "format_version": DESCRIPTION_VERSION,
        "base_model": meta.base_model,
        "task": meta.task,
        "labels": list(meta.labels) if meta.labels else None,
        "max_length": max_length,
        "max_positions": max_positions,  # the most tokens the graphs run (max_length <= it)
        "opset": opset,
        "inputs": {name: list(TOKEN_AXES) for name in token_names},  # int64
        "output": {"name": OUTPUT_NAME, "axes": output_axes},  # float32
        "models": models,
        "rank": meta.rank,
        "alpha": meta.alpha,
        "basis_fingerprint": meta.basis_fingerprint,
        "adapter": adapter_file,
    }
    if adapter_inputs is not None:  # float32, named as in the adapter file
        description["adapter_inputs"] = {name: list(value.shape) for name, value in adapter_inputs.items()}
    if onnx_adapter is not None:
        description["onnx_adapter"] = {"file": onnx_adapter, "model_version": basis_version(meta.basis_fingerprint)}
        if onnx_adapter_sha256:
            description["onnx_adapter"]["sha256"] = onnx_adapter_sha256
    return description


def write_description(path: Path, description: dict) -> None:
    path.write_text(json.dumps(description, indent=2) + "\n")


def move_into_place(files: dict[str, Path], folder: Path, adapter: Path) -> None:
    """Staged files (with any external `.data` file) -> `folder`, all or nothing: the files they
    replace are set aside first and put back if any move fails, so a failed export never leaves
    half a set. `files` then names the moved files."""
    moves = [(p, folder / p.name) for p in files.values()]
    moves += [
        (p.with_name(p.name + extra), folder / (p.name + extra))
        for p in files.values()
        for extra in SIDECARS
        if p.with_name(p.name + extra).exists()
    ]
    if any(target.resolve() == adapter.resolve() for _, target in moves):
        raise LoraXSError(f"the export would overwrite the adapter {adapter}; choose another folder")
    for _, target in moves:
        if target.is_dir():
            raise LoraXSError(f"cannot write {target}: a folder of that name is in the way; nothing was replaced")
    with signals_deferred():  # SIGTERM mid-way would leave half a set; it is acted on after the moves
        try:
            aside = Path(tempfile.mkdtemp(prefix=".export-old-", dir=folder))
        except OSError as err:
            raise LoraXSError(f"cannot write to output folder {folder}: {err.strerror or err}") from None
        _move_all(moves, aside)
    for kind, path in files.items():
        files[kind] = folder / path.name


def _move_all(moves: list[tuple[Path, Path]], aside: Path) -> None:
    """(staged, target) moves; the files replaced go to `aside` first and come back on failure."""
    replaced, placed, stranded, target = [], [], [], None
    try:
        for staged, target in moves:
            if target.exists() or target.is_symlink():
                os.replace(target, aside / target.name)
                replaced.append(target)
            os.replace(staged, target)
            placed.append(target)
    except OSError as err:
        for done in placed:
            done.unlink(missing_ok=True)
        for old in replaced:
            try:
                os.replace(aside / old.name, old)
            except OSError:
                stranded.append(old.name)
        kept = f"; the previous {', '.join(stranded)} are in {aside}" if stranded else "; the folder was left as it was"
        raise LoraXSError(f"cannot write {target}: {err.strerror or err}{kept}") from None
    finally:
        if not stranded:
            shutil.rmtree(aside, ignore_errors=True)
