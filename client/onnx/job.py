"""One export: a personal adapter file -> verified ONNX files plus tokenizer, a folder a device
runs with onnxruntime and tokenizers alone.

Everything comes from the adapter's metadata (base model, task, rank, alpha, targets, labels);
the factors come from `--basis`, the cache, or a fresh SVD, and must carry the adapter's
fingerprint. A missing output folder is created (and removed again if the export fails). Files are
staged in a hidden folder beside `--out` and moved into place all or nothing only after every check
passed: a failed run leaves the output folder as it was and never touches the adapter.
"""

import copy
import shutil
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from client.onnx.folder import MODEL_KINDS, describe_export, move_into_place, write_description
from client.onnx.graph import (
    OUTPUT_NAME,
    LogitsGraph,
    export_graph,
    needs_external_data,
    quantize_int8,
    token_input_names,
)
from client.onnx.onnx_adapter import (
    SUFFIX,
    checksum_file,
    file_sha256,
    load_onnx_adapter,
    make_overridable,
    run_with_adapter,
    write_onnx_adapter,
)
from client.onnx.personal_graph import graph_state, logits_graph, split_graph_state, with_tables
from client.onnx.verify import (
    FP32_TOLERANCE,
    LATENCY_BATCH,
    LATENCY_LENGTH,
    latency_batch,
    max_abs_diff,
    max_diff_over,
    median_ms,
    ort_accuracy,
    ort_logits,
    ort_session,
    other_user_adapter,
    sample_batches,
    torch_logits,
)
from shared.artifacts.adapter_file import AdapterMeta
from shared.artifacts.blob import check_output_file
from shared.artifacts.open_adapter import AdapterFile, check_labels, open_adapter, read_adapter
from shared.base_models import load_tokenizer
from shared.data.batches import DEFAULT_MAX_LENGTH, make_loader
from shared.data.local_folder import load_local_folder
from shared.data.text_splits import TextSplits
from shared.errors import LoraXSError
from shared.lexical import STRIDE
from shared.loraxs.model import load_adapter_state, merged_model
from shared.personal_output import OutputParts

QUANTIZE_CHOICES = ("int8",)
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert")  # positions start after the padding index
MIN_OPSET = 14
EVAL_BATCH_SIZE = 32


@dataclass(frozen=True)
class ExportConfig:
    """adapter: the personal adapter file. out: the merged fp32 model (`*.onnx`); its folder also
    receives `<stem>.int8.onnx`, `<stem>.adapter-input.onnx`, `<stem>.export.json` and the
    tokenizer files (existing ones are replaced); with onnx_adapter also the shared base graph
    `<stem>.adapter-base.onnx` and `<adapter stem>.onnx_adapter`. model: must name the adapter's base model.
    data_dir: its test split measures accuracy; its `.loraxs/` cache may hold the factors.
    opset: None = the exporter's default. timing: also time PyTorch against onnxruntime (off by
    default: a benchmark's job), `repeats` timed runs behind each latency median."""

    adapter: Path
    out: Path
    model: str | None = None
    basis_file: Path | None = None
    data_dir: Path | None = None
    quantize: str | None = None
    adapter_as_input: bool = False
    onnx_adapter: bool = False
    opset: int | None = None
    timing: bool = False
    repeats: int = 20
    max_length: int = DEFAULT_MAX_LENGTH
    latency_batches: tuple[int, ...] = (LATENCY_BATCH,)  # batch sizes timed; others than 1 are labelled
    key_source: object = field(default=None, repr=False)  # shared/crypto/at_rest.KeySource of an encrypted adapter

    def __post_init__(self):
        for name in ("adapter", "out", "basis_file", "data_dir"):
            value = getattr(self, name)
            object.__setattr__(self, name, Path(value).expanduser() if value else None)
        if self.out is None or self.out.suffix != ".onnx":
            raise LoraXSError(f"--out must name an .onnx file, got {self.out}")
        if self.quantize is not None and self.quantize not in QUANTIZE_CHOICES:
            raise LoraXSError(f"--quantize must be one of {', '.join(QUANTIZE_CHOICES)}, got {self.quantize!r}")
        newest = onnx.defs.onnx_opset_version()
        if self.opset is not None and not MIN_OPSET <= self.opset <= newest:
            raise LoraXSError(f"--opset must be between {MIN_OPSET} and {newest}, got {self.opset}")
        if not self.latency_batches or min(self.latency_batches) < 1:
            raise LoraXSError(f"latency batch sizes must be positive, got {self.latency_batches}")
        if self.repeats < 1:
            raise LoraXSError(f"--repeats must be positive, got {self.repeats}")
        if self.max_length < 2:
            raise LoraXSError(f"--max-length must be at least 2, got {self.max_length}")

    def output_name(self, kind: str) -> str:
        stem = self.out.stem
        return {
            "fp32": self.out.name,
            "int8": f"{stem}.int8.onnx",
            "adapter-input": f"{stem}.adapter-input.onnx",
            "adapter-base": f"{stem}.adapter-base.onnx",
            "onnx-adapter": self.adapter.stem + SUFFIX,
            "description": f"{stem}.export.json",
        }[kind]


@dataclass
class Subject:
    """What gets exported: the base model with the adapter loaded (unmerged) and its context."""

    model: nn.Module
    state: dict[str, torch.Tensor]  # the adapter inputs: the model's adapter state (+ the parts' tables)
    meta: AdapterMeta
    tokenizer: object
    token_names: list[str]
    factors_source: str
    parts: OutputParts = OutputParts()  # a personal adapter's lexical part and temperature


@dataclass
class ExportReport:
    meta: AdapterMeta
    factors_source: str
    opset: int
    files: dict[str, Path]  # fp32 / int8 / adapter-input / adapter-base / onnx-adapter / description / tokenizer:<name>
    diffs: dict[str, float]  # what was compared -> max abs difference of the logits
    latency_ms: dict[
        str, float
    ]  # runtime [", batch N"] -> median ms at (LATENCY_BATCH or N, LATENCY_LENGTH); {} without timing
    repeats: int
    threads: int
    accuracy: dict[str, float] = field(default_factory=dict)  # fp32 / int8 on the --data test split
    test_examples: int = 0


def _step(message: str) -> None:
    print(f"export: {message}", file=sys.stderr, flush=True)


def run_export(config: ExportConfig) -> ExportReport:
    adapter = read_adapter(config.adapter, model=config.model, key_source=config.key_source)
    _check_output(config)
    splits = load_local_folder(config.data_dir, task=adapter.meta.task) if config.data_dir else None
    if splits is not None:
        check_labels(adapter, splits, config.data_dir)
    created = _make_folder(config.out.parent)
    stage = _staging_folder(config.out.parent, created)  # proves the folder writable before any heavy work
    done = False
    try:
        subject = _load_subject(config, adapter)
        positions = position_limit(subject.model, subject.tokenizer)
        if positions is not None and config.max_length > positions:
            _step(
                f"--max-length {config.max_length} is more than the model's {positions} positions: "
                f"recording {positions}"
            )
            config = replace(config, max_length=positions)
        report = _export_verified(config, subject, splits, stage)
        for saved in subject.tokenizer.save_pretrained(stage):
            if Path(saved).is_file():
                report.files[f"tokenizer:{Path(saved).name}"] = stage / Path(saved).name
        report.files["description"] = stage / config.output_name("description")
        description = describe_export(
            subject.meta,
            subject.token_names,
            report.opset,
            config.max_length,
            models={kind: config.output_name(kind) for kind in MODEL_KINDS if kind in report.files},
            adapter_inputs=subject.state if config.adapter_as_input or config.onnx_adapter else None,
            adapter_file=config.adapter.name,
            onnx_adapter=config.output_name("onnx-adapter") if config.onnx_adapter else None,
            max_positions=positions,
            onnx_adapter_sha256=file_sha256(report.files["onnx-adapter"]) if config.onnx_adapter else None,
        )
        if not subject.parts.empty:
            description["personal_output"] = _describe_parts(subject.parts)
        write_description(report.files["description"], description)
        move_into_place(report.files, config.out.parent, config.adapter)
        report.files["adapter"] = config.adapter  # what a user of the adapter-as-input graph sends
        done = True
        return report
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if not done:
            _remove_empty(created)


def position_limit(model: nn.Module, tokenizer) -> int | None:
    """The most tokens the model runs: its position table (less a RoBERTa-style offset) and the
    tokenizer's own limit, whichever is smaller; None when neither says."""
    limits = []
    config = getattr(model, "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        offset = (
            getattr(config, "pad_token_id", None) if getattr(config, "model_type", "") in OFFSET_POSITIONS else None
        )
        limits.append(positions - (offset + 1 if isinstance(offset, int) else 0))
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:  # "no limit" is a huge int
        limits.append(tokenizer_limit)
    return min(limits) if limits else None


def _check_output(config: ExportConfig) -> None:
    folder = config.out.parent
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        raise LoraXSError(f"output folder {folder} cannot be made: {existing} is not a folder")
    check_output_file(config.out, force=True, hint="an .onnx file name")
    for kind in (*MODEL_KINDS, "onnx-adapter", "description"):
        if (folder / config.output_name(kind)).resolve() == config.adapter.resolve():
            raise LoraXSError(f"--out {config.out} would overwrite the adapter {config.adapter}")


def _load_subject(config: ExportConfig, adapter: AdapterFile) -> Subject:
    opened = open_adapter(adapter, basis_file=config.basis_file, data_dir=config.data_dir)
    model = opened.model
    state = {name: adapter.state[name] for name, p in model.named_parameters() if p.requires_grad}  # model order
    tokenizer = load_tokenizer(adapter.meta.base_model)
    return Subject(
        model,
        graph_state(state, adapter.parts, model),
        adapter.meta,
        tokenizer,
        token_input_names(model, tokenizer),
        opened.factors_source,
        adapter.parts,
    )


def _describe_parts(parts: OutputParts) -> dict:
    """What the graphs compute after the encoder, for whoever reads their logits."""
    return {
        "lexical_wordpieces": int((parts.lexical.ids < STRIDE).sum()) if parts.lexical is not None else 0,
        "lexical_pairs": int((parts.lexical.ids >= STRIDE).sum()) if parts.lexical is not None else 0,
        "temperature": parts.temperature,
        "logits": "(encoder logits + lexical logits) / temperature: their softmax is the calibrated probability",
    }


def _make_folder(folder: Path) -> list[Path]:
    """Creates a missing output folder (and its parents), as client.run does; -> those created."""
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _remove_empty(created)
        raise LoraXSError(f"cannot create output folder {folder}: {err.strerror or err}") from None
    return created


def _remove_empty(folders: list[Path]) -> None:
    """A failed export leaves no folder it created (deepest first)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _staging_folder(folder: Path, created: list[Path]) -> Path:
    try:
        return Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    except OSError as err:
        _remove_empty(created)
        raise LoraXSError(f"cannot write to output folder {folder}: {err.strerror or err}") from None


def _check_parity(what: str, diff: float, tolerance: float = FP32_TOLERANCE) -> None:
    if not diff <= tolerance:  # NaN (non-finite logits) fails too
        raise LoraXSError(f"{what}: max abs difference {diff:.3g} exceeds {tolerance:g}; nothing was written")


def _tolerance(parts: OutputParts, expected: list) -> float:
    """FP32_TOLERANCE; with personal parts, per 10 units of the largest logit and times 1 / T
    below T = 1 (a lexical part and a temperature scale logits and their float32 rounding alike)."""
    if parts.empty:
        return FP32_TOLERANCE
    largest = max(float(abs(e).max()) for e in expected)
    return FP32_TOLERANCE * max(1.0, 1.0 / parts.temperature, largest / 10)


def _export_verified(config: ExportConfig, subject: Subject, splits: TextSplits | None, stage: Path) -> ExportReport:
    task, names, threads = subject.meta.task, subject.token_names, torch.get_num_threads()
    external = needs_external_data(subject.model)
    reference = logits_graph(subject.model, task, names, subject.parts)  # base + adapter, unmerged
    merged = logits_graph(merged_model(subject.model), task, names, subject.parts)
    batches = sample_batches(subject.tokenizer, names)
    expected = [torch_logits(reference, b) for b in batches]
    files, diffs, sessions = {}, {}, {}

    files["fp32"] = stage / config.output_name("fp32")
    _step(f"exporting the merged model to {files['fp32'].name}")
    opset = export_graph(merged, {}, files["fp32"], config.opset, external)
    sessions["fp32"] = ort_session(files["fp32"], threads)
    what = "onnxruntime fp32 vs PyTorch (unmerged)"
    diffs[what] = max_diff_over(batches, expected, lambda b: ort_logits(sessions["fp32"], b))
    _check_parity(what, diffs[what], _tolerance(subject.parts, expected))
    _check_runs_at_max_length(sessions["fp32"], names, config.max_length)

    if config.quantize == "int8":
        files["int8"] = stage / config.output_name("int8")
        _step(f"quantizing to {files['int8'].name}")
        quantize_int8(files["fp32"], files["int8"], external)
        sessions["int8"] = ort_session(files["int8"], threads)
        what = "onnxruntime int8 vs PyTorch (unmerged, not checked)"
        diffs[what] = max_diff_over(batches, expected, lambda b: ort_logits(sessions["int8"], b))

    if config.adapter_as_input or config.onnx_adapter:
        kind = "adapter-input" if config.adapter_as_input else "adapter-base"
        files[kind] = stage / config.output_name(kind)
        _step(f"exporting the adapter-as-input graph to {files[kind].name}")
        graph = logits_graph(subject.model, task, names, subject.parts, adapter_names=list(subject.state))
        export_graph(graph, subject.state, files[kind], config.opset, external)
        if config.onnx_adapter:
            files["onnx-adapter"] = stage / config.output_name("onnx-adapter")
            write_onnx_adapter(files["onnx-adapter"], _numpy_state(subject.state), subject.meta.basis_fingerprint)
        if config.adapter_as_input and config.onnx_adapter:  # the base is the same graph, its inputs given defaults
            files["adapter-base"] = stage / config.output_name("adapter-base")
            shutil.copyfile(files["adapter-input"], files["adapter-base"])
            if files["adapter-input"].with_name(files["adapter-input"].name + ".data").exists():
                raise LoraXSError("--onnx-adapter with --adapter-as-input is not supported above 2 GiB; pass one")
        if config.onnx_adapter:
            make_overridable(files["adapter-base"], _shapes(subject.state), external)
        sessions.update({k: ort_session(files[k], threads) for k in ("adapter-input", "adapter-base") if k in files})
        diffs.update(_verify_adapter_graphs(config, subject, batches, sessions, stage, external))

    latency = _timed(config, subject, reference, merged, sessions, files) if config.timing else {}
    report = ExportReport(
        meta=subject.meta,
        factors_source=subject.factors_source,
        opset=opset,
        files=files,
        diffs=diffs,
        latency_ms=latency,
        repeats=config.repeats,
        threads=threads,
    )
    if splits is not None:
        loader = make_loader(splits.test, subject.tokenizer, task, EVAL_BATCH_SIZE, config.max_length)
        report.accuracy = {
            kind: ort_accuracy(sessions[kind], loader, names) for kind in ("fp32", "int8") if kind in sessions
        }
        report.test_examples = len(splits.test)
    return report


def _check_runs_at_max_length(session, token_names: list[str], max_length: int) -> None:
    """The description promises that texts of max_length tokens run: one such batch must give
    finite logits, or nothing is written."""
    values = {"input_ids": 1, "attention_mask": 1, "token_type_ids": 0}
    batch = {name: np.full((1, max_length), values[name], dtype=np.int64) for name in token_names}
    try:
        finite = bool(np.isfinite(ort_logits(session, batch)).all())
    except Exception as err:
        raise LoraXSError(
            f"the exported model does not run {max_length} tokens "
            f"({str(err).strip()[:160]}); pass a smaller --max-length"
        ) from None
    if not finite:
        raise LoraXSError(f"the exported model gives NaN or Inf at {max_length} tokens; nothing was written")


def _numpy_state(state: dict[str, torch.Tensor]) -> dict:
    return {name: value.float().numpy() for name, value in state.items()}


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {name: list(value.shape) for name, value in state.items()}


def _verify_adapter_graphs(config, subject: Subject, batches, sessions, stage: Path, external: bool) -> dict:
    """The one adapter-as-input graph fed user A (this adapter) and user B (a seeded other one),
    and the shared base graph with A's and B's `.onnx_adapter` active, must match each user's
    merged export; fails above the fp32 tolerance."""
    state_b = other_user_adapter(subject.state)
    model_state_b, tables_b = split_graph_state(state_b)
    model_b = copy.deepcopy(subject.model)
    load_adapter_state(model_b, model_state_b)
    merged_b_path = stage / "user-b.check.onnx"
    graph_b = logits_graph(merged_model(model_b), subject.meta.task, subject.token_names, subject.parts)
    export_graph(with_tables(graph_b, tables_b), {}, merged_b_path, config.opset, external)
    merged_b = ort_session(merged_b_path, torch.get_num_threads())
    out_a = [ort_logits(sessions["fp32"], b) for b in batches]
    out_b = [ort_logits(merged_b, b) for b in batches]
    del merged_b
    for path in stage.glob(merged_b_path.name + "*"):  # a scratch file, never moved into place
        path.unlink()
    user_a, user_b = _numpy_state(subject.state), _numpy_state(state_b)
    diffs = {}
    if "adapter-input" in sessions:
        graph = sessions["adapter-input"]
        diffs["adapter-as-input (user A) vs merged export A"] = max_diff_over(
            batches, out_a, lambda b: ort_logits(graph, b, user_a)
        )
        diffs["adapter-as-input (user B) vs merged export B"] = max_diff_over(
            batches, out_b, lambda b: ort_logits(graph, b, user_b)
        )
    if "adapter-base" in sessions:
        base, fingerprint, shapes = sessions["adapter-base"], subject.meta.basis_fingerprint, _shapes(subject.state)
        user_b_path = stage / ("user-b.check" + SUFFIX)
        write_onnx_adapter(user_b_path, user_b, fingerprint)
        adapter_a = load_onnx_adapter(stage / config.output_name("onnx-adapter"), shapes, fingerprint)
        adapter_b = load_onnx_adapter(user_b_path, shapes, fingerprint)
        for user, adapter, expected in (("A", adapter_a, out_a), ("B", adapter_b, out_b)):
            diffs[f"base + .onnx_adapter (user {user}) vs merged export {user}"] = max_diff_over(
                batches, expected, lambda b: run_with_adapter(base, OUTPUT_NAME, b, adapter)
            )
        del adapter_a, adapter_b
        user_b_path.unlink()
        checksum_file(user_b_path).unlink()
    for what, diff in diffs.items():
        _check_parity(what, diff, _tolerance(subject.parts, out_a + out_b))
    diffs["merged export A vs merged export B (how much the users differ)"] = max(
        max_abs_diff(a, b, batch["attention_mask"]) for a, b, batch in zip(out_a, out_b, batches)
    )
    return diffs


def _timed(
    config: ExportConfig, subject: Subject, reference: LogitsGraph, merged: LogitsGraph, sessions: dict, files: dict
) -> dict[str, float]:
    """--timing: every runtime's median latency at each of `config.latency_batches`."""
    sizes = " and ".join(str(b) for b in config.latency_batches)
    _step(f"timing batch {sizes} x sequence {LATENCY_LENGTH}, median of {config.repeats} runs")
    latency = {}
    for batch_size in config.latency_batches:
        timed = _latencies(config.repeats, subject, reference, merged, sessions, files, batch_size)
        suffix = "" if batch_size == LATENCY_BATCH else f", batch {batch_size}"
        latency.update({f"{label}{suffix}": ms for label, ms in timed.items()})
    return latency


def _latencies(
    repeats: int,
    subject: Subject,
    reference: LogitsGraph,
    merged: LogitsGraph,
    sessions: dict,
    files: dict[str, Path],
    batch_size: int = LATENCY_BATCH,
) -> dict:
    batch = latency_batch(subject.tokenizer, subject.token_names, batch_size)
    tensors = [torch.from_numpy(batch[name]) for name in subject.token_names]
    user_a = _numpy_state(subject.state)
    with torch.no_grad():
        latency = {
            "PyTorch eager, adapter unmerged": median_ms(lambda: reference(*tensors), repeats),
            "PyTorch eager, merged": median_ms(lambda: merged(*tensors), repeats),
        }
    runs = {
        "fp32": ("onnxruntime fp32, merged", None),
        "int8": ("onnxruntime int8, merged", None),
        "adapter-input": ("onnxruntime fp32, adapter as input", user_a),
    }
    for kind, session in sessions.items():
        if kind in runs:
            label, adapter = runs[kind]
            latency[label] = median_ms(lambda: ort_logits(session, batch, adapter), repeats)
    if "adapter-base" in sessions:
        loaded = load_onnx_adapter(
            files["onnx-adapter"], {n: list(v.shape) for n, v in user_a.items()}, subject.meta.basis_fingerprint
        )
        latency["onnxruntime fp32, base + .onnx_adapter"] = median_ms(
            lambda: run_with_adapter(sessions["adapter-base"], OUTPUT_NAME, batch, loaded), repeats
        )
    return latency
