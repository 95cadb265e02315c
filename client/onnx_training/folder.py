"""A training-artifact folder (`python -m client.export --training DIR`) opened on a device:
its description checked, every file's sha256 checked, its graphs opened with onnxruntime and
its tokenizer with `tokenizers`. No torch, no transformers: client.run --runtime onnx imports this.

A checker of outside input: anything unexpected in the folder is one LoraXSError line.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.errors import LoraXSError

DESCRIPTION = "training.json"
FORMAT, READABLE_VERSIONS = "loraxs-onnx-training", ("1",)
TOKEN_NAMES = ("input_ids", "attention_mask", "token_type_ids")
MAX_DESCRIPTION_BYTES = 1 << 20
SPLIT_GRAPHS = ("lower", "upper_step", "upper_features")


@dataclass(frozen=True)
class TrainingFolder:
    path: Path
    description: dict

    @property
    def layers(self) -> list[str]:
        return list(self.description["layers"])

    @property
    def token_inputs(self) -> list[str]:
        return list(self.description["token_inputs"])

    @property
    def fingerprint(self) -> str:
        return str(self.description["basis_fingerprint"])

    @property
    def split(self) -> dict | None:
        """{"train_blocks", "blocks", "lower_layers", "upper_layers"} of the split graphs (lower.onnx,
        upper_step.onnx, upper_features.onnx); None for a folder with the full graphs alone."""
        return self.description.get("split")

    def graph(self, kind: str) -> Path:
        name = self.description["graphs"].get(kind)
        if not name:
            raise LoraXSError(f"{self.path} holds no {kind} graph")
        return self.path / name


def is_training_folder(path: str | Path) -> bool:
    return (Path(path).expanduser() / DESCRIPTION).is_file()


def open_training_folder(path: str | Path, verify: bool = True) -> TrainingFolder:
    """The folder's description, checked; with `verify`, every file's sha256 too."""
    folder = Path(path).expanduser()
    source = folder / DESCRIPTION
    if not source.is_file():
        raise LoraXSError(f"{folder} holds no {DESCRIPTION}; write one with `python -m client.export --training DIR`")
    try:
        if source.stat().st_size > MAX_DESCRIPTION_BYTES:
            raise LoraXSError(f"{source} is larger than a training description can be")
        description = json.loads(source.read_text(encoding="utf-8"))
        problem = _description_problem(description)
    except LoraXSError:
        raise
    except (OSError, ValueError, RecursionError) as err:
        raise LoraXSError(
            f"cannot read {source}: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from None
    except Exception as err:  # a checker never raises anything but a rejection
        problem = f"unexpected content ({type(err).__name__})"
    if problem:
        raise LoraXSError(f"{source} is not a usable training description: {problem}")
    opened = TrainingFolder(folder, description)
    if verify:
        check_files(opened)
    return opened


def _description_problem(d) -> str | None:
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        return f"format is not {FORMAT!r}"
    if d.get("format_version") not in READABLE_VERSIONS:
        return (
            f"format version {str(d.get('format_version'))[:20]!r} (this version reads {', '.join(READABLE_VERSIONS)})"
        )
    if d.get("task") not in ("seq-cls", "causal-lm"):
        return "unknown task"
    rank, layers = d.get("rank"), d.get("layers")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= 4096:
        return "rank is not a positive integer"
    if not isinstance(layers, list) or not layers or not all(isinstance(n, str) for n in layers):
        return "layers is not a list of module names"
    tokens = d.get("token_inputs")
    if not isinstance(tokens, list) or not tokens or not set(tokens) <= set(TOKEN_NAMES):
        return "token_inputs names unknown inputs"
    files, graphs = d.get("files"), d.get("graphs")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        return "files is not a table of sha256 digests"
    if not isinstance(graphs, dict) or "step" not in graphs:
        return "graphs names no step graph"
    named = [*graphs.values(), d.get("weights"), "tokenizer.json"]
    for name in named:
        if not isinstance(name, str) or name not in files or Path(name).name != name:
            return f"file {str(name)[:80]!r} is not listed with a checksum"
    for name in files:
        if Path(name).name != name or name.startswith("."):
            return f"file name {name[:80]!r} is not a plain name in the folder"
    meta = d.get("adapter_meta")
    if (
        not isinstance(d.get("basis_fingerprint"), str)
        or not isinstance(meta, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    ):
        return "basis fingerprint or adapter metadata missing"
    hidden = d.get("hidden_size")
    if not isinstance(hidden, int) or isinstance(hidden, bool) or not 0 < hidden <= 1 << 16:
        return "hidden_size is not a positive integer"
    shapes = d.get("shapes")
    if not isinstance(shapes, dict) or shapes.get("lora_R") != [len(layers), rank, rank]:
        return "shapes.lora_R is not [layers, rank, rank]"
    problem = _split_problem(d.get("split"), len(layers), graphs)
    if problem:
        return problem
    for key in ("pad_token", "max_length_limit"):
        if d.get(key) is not None and not isinstance(d.get(key), str if key == "pad_token" else int):
            return f"{key} has the wrong type"
    return None


def _split_problem(split, num_layers: int, graphs: dict) -> str | None:
    if split is None:
        return None
    if not isinstance(split, dict):
        return "split is not a table"
    numbers = [split.get("train_blocks"), split.get("blocks")]
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers) or not 0 < numbers[0] < numbers[1]:
        return "split.train_blocks is not a positive integer below split.blocks"
    rows = [split.get("lower_layers"), split.get("upper_layers")]
    if not all(isinstance(r, list) and all(isinstance(k, int) and not isinstance(k, bool) for k in r) for r in rows):
        return "split layers are not lists of R rows"
    if sorted(rows[0] + rows[1]) != list(range(num_layers)) or not rows[1]:
        return "split layers are not the R rows, each once"
    if not all(kind in graphs for kind in SPLIT_GRAPHS):
        return f"split names no {', '.join(SPLIT_GRAPHS)} graphs"
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_files(folder: TrainingFolder) -> None:
    for name, expected in folder.description["files"].items():
        path = folder.path / name
        try:
            actual = sha256_file(path)
        except OSError as err:
            raise LoraXSError(f"cannot read {path}: {err.strerror or err}") from None
        if actual != expected:
            raise LoraXSError(
                f"{path} does not match its checksum in {DESCRIPTION} (changed or corrupt); "
                "export the training artifacts again"
            )


def ort_session(path: Path, threads: int = 0, optimization: str = "all", arena: bool = False):
    """An onnxruntime CPU session; `optimization`: basic | extended | all (graph optimizations;
    the same step time here). Lean on memory: no pre-packed copies of the MatMul weights (MiniLM:
    45 MiB less, the same step time) and, unless `arena`, no memory arena (a 16 x 64 step peaked
    at 343 instead of 483 MiB, about 8 % slower)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = arena
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types on a bad graph
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise LoraXSError(f"onnxruntime cannot load {path}: {first}") from None


class FolderTokenizer:
    """The folder's tokenizer.json as the recipe's `Tokenize`: texts, max_length (None: whole)
    -> int64 token ids of each text, special tokens included."""

    def __init__(self, folder: TrainingFolder):
        from tokenizers import Tokenizer

        path = folder.path / "tokenizer.json"
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception on a broken file
            raise LoraXSError(
                f"cannot read the tokenizer {path}: {str(err).splitlines()[0] if str(err) else err}"
            ) from None
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        pad = folder.description.get("pad_token")
        pad_id = self.tokenizer.token_to_id(pad) if isinstance(pad, str) else None
        self.pad_id = int(pad_id) if pad_id is not None else 0
        limit = folder.description.get("max_length_limit")
        self.limit = int(limit) if isinstance(limit, int) and limit > 0 else None
        self.special_ids = {int(i) for i, token in self.tokenizer.get_added_tokens_decoder().items() if token.special}

    def __call__(self, texts: list[str], max_length: int | None) -> list[np.ndarray]:
        if max_length is None:
            self.tokenizer.no_truncation()
        else:
            self.tokenizer.enable_truncation(int(max_length))
        return [np.asarray(e.ids, dtype=np.int64) for e in self.tokenizer.encode_batch(list(texts))]
