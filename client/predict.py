"""Classify texts with an exported model folder: onnxruntime and tokenizers only, no PyTorch.

    python -m client.predict --model-dir DIR [--adapter USER.onnx_adapter] [--int8] TEXT...
    python -m client.predict --model-dir DIR [--adapter USER.onnx_adapter] --input FILE

DIR is what `python -m client.export` wrote (`<stem>.export.json`, the ONNX files, tokenizer.json).
Without --adapter the merged model runs (or its int8 quantization with --int8); with --adapter
the shared base graph (`--onnx-adapter` export) runs with that user's `.onnx_adapter` active.
Prints one line per text: label, its softmax score, the text. --input FILE reads one text a line
(`-` for stdin), a line at a time, bounded. Bad input prints one line to stderr and exits 1.

Everything read here is untrusted: the description is checked against a schema
(client/onnx/description.py) and against the graph it names (inputs, outputs, one logit per
label, the adapter parameters); every file is a regular file under a size cap (never a pipe or
a device); an `.onnx_adapter` must match its sha256 checksum; onnxruntime's load and run errors
are one line; --threads is at most the machine's CPUs.

This module must import neither torch nor transformers (tests/test_onnx_adapter.py checks): a device
or a serving process pays for onnxruntime and a tokenizer, nothing more.
"""

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.onnx.description import check_description
from client.onnx.onnx_adapter import LoadedAdapter, load_onnx_adapter, run_with_adapter
from shared.artifacts.untrusted_file import bounded_lines, open_regular, read_untrusted_text
from shared.cli import refuse_blank_values, run_cli
from shared.errors import LoraXSError

BATCH_SIZE = 32
DESCRIPTION_GLOB = "*.export.json"
MiB = 2**20
MAX_DESCRIPTION_BYTES = 1 * MiB
MAX_TOKENIZER_BYTES = 64 * MiB
MAX_MODEL_BYTES = 4096 * MiB  # an fp32 graph over 2 GiB keeps its weights in a .data file beside it
MAX_INPUT_BYTES = 1024 * MiB  # --input, read a line at a time
MAX_LINE_BYTES = 1 * MiB


@dataclass
class ModelFolder:
    path: Path
    description: dict

    def model_file(self, kind: str) -> Path:
        name = self.description["models"].get(kind)
        hint = {"int8": "export with --quantize int8", "adapter-base": "export with --onnx-adapter"}.get(kind, "")
        if not name or not (self.path / name).exists():  # a pipe or device in its place: load_session says so
            raise LoraXSError(f"{self.path} holds no {kind} model{'; ' + hint if hint else ''}")
        return self.path / name


def open_model_folder(path: str | Path) -> ModelFolder:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise LoraXSError(f"model folder {folder} does not exist")
    found = sorted(folder.glob(DESCRIPTION_GLOB))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise LoraXSError(
            f"{folder} holds {what} {DESCRIPTION_GLOB} export description(s); "
            "point --model-dir at one `python -m client.export` output folder"
        )
    text = read_untrusted_text(found[0], "export description", MAX_DESCRIPTION_BYTES)
    try:
        description = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise LoraXSError(f"cannot read {found[0]}: {str(err)[:200]}") from None
    if (
        isinstance(description, dict)
        and description.get("format") == "loraxs-onnx-export"
        and description.get("task") != "seq-cls"
    ):
        raise LoraXSError(
            f"{folder} holds a {str(description.get('task'))[:40]} export; client.predict classifies (seq-cls)"
        )
    return ModelFolder(folder, check_description(description, str(found[0])))


def make_tokenizer(folder: ModelFolder):
    from tokenizers import Tokenizer

    path = folder.path / "tokenizer.json"
    text = read_untrusted_text(path, "tokenizer", MAX_TOKENIZER_BYTES)
    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as err:  # tokenizers raises a bare Exception on a broken file
        raise LoraXSError(
            f"cannot read the tokenizer {path}: {str(err).splitlines()[0] if str(err) else err}"
        ) from None
    pad_token = "[PAD]"
    config = folder.path / "tokenizer_config.json"
    if config.exists():
        try:
            settings = json.loads(read_untrusted_text(config, "tokenizer config", MAX_DESCRIPTION_BYTES))
        except (ValueError, RecursionError):
            raise LoraXSError(f"cannot read {config}: not JSON") from None
        pad_token = (settings.get("pad_token") if isinstance(settings, dict) else None) or pad_token
    pad_id = tokenizer.token_to_id(pad_token) if isinstance(pad_token, str) else None
    tokenizer.enable_truncation(int(folder.description["max_length"]))
    tokenizer.enable_padding(pad_id=pad_id or 0, pad_token=pad_token if isinstance(pad_token, str) else "[PAD]")
    return tokenizer


def encode(tokenizer, texts: list[str], input_names: list[str]) -> dict[str, np.ndarray]:
    encodings = tokenizer.encode_batch(texts)
    arrays = {
        "input_ids": [e.ids for e in encodings],
        "attention_mask": [e.attention_mask for e in encodings],
        "token_type_ids": [e.type_ids for e in encodings],
    }
    return {name: np.array(arrays[name], dtype=np.int64) for name in input_names}  # each (B, T)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))  # (B, C)
    return shifted / shifted.sum(-1, keepdims=True)


def check_threads(threads: int) -> int:
    """0 (onnxruntime's choice) up to this machine's CPUs: more only costs memory (a thread pool
    of 100000 grows past gigabytes)."""
    cpus = os.cpu_count() or 1
    if not 0 <= threads <= cpus:
        raise LoraXSError(
            f"--threads must be in [0, {cpus}] (0: onnxruntime's choice; this machine has {cpus} CPUs), got {threads}"
        )
    return threads


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def load_session(model: Path, threads: int):
    """An onnxruntime session of the regular file `model`; anything onnxruntime cannot load
    (truncated, empty, random bytes) is one line."""
    import onnxruntime as ort

    with open_regular(model, "model", MAX_MODEL_BYTES):  # never hands a pipe or a device to onnxruntime
        pass
    options = ort.SessionOptions()
    options.intra_op_num_threads = check_threads(threads)
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise LoraXSError(f"cannot load the model {model}: {_first_line(err)}") from None


def check_session(session, folder: ModelFolder, model: Path, adapter: LoadedAdapter | None) -> None:
    """The graph must take exactly the description's token inputs, give its output with one
    logit per label and, with an adapter, hold every adapter parameter as an overridable
    initializer (an int8 or merged graph in place of the base graph holds none)."""
    description = folder.description
    taken = sorted(i.name for i in session.get_inputs())
    if taken != sorted(description["inputs"]):
        raise LoraXSError(
            f"{model} takes the inputs {', '.join(taken)}, but the description names "
            f"{', '.join(sorted(description['inputs']))}"
        )
    output = description["output"]["name"]
    outputs = {o.name: o.shape for o in session.get_outputs()}
    if output not in outputs:
        raise LoraXSError(f"{model} has no output {output!r}")
    width = outputs[output][-1] if outputs[output] else None
    if isinstance(width, int) and width != len(description["labels"]):
        raise LoraXSError(
            f"{model} gives {width} logits, but the description names {len(description['labels'])} labels"
        )
    if adapter is not None:
        overridable = {i.name for i in session.get_overridable_initializers()}
        missing = sorted(set(adapter.shapes) - overridable)
        if missing:
            raise LoraXSError(
                f"{model} is not a base graph for adapters: it has no parameter {missing[0]} "
                "(export with --onnx-adapter)"
            )


class Classifier:
    """One model folder ready to classify: session, tokenizer and adapter loaded and checked once."""

    def __init__(self, folder: ModelFolder, adapter_path: str | None = None, int8: bool = False, threads: int = 0):
        description = folder.description
        self.adapter: LoadedAdapter | None = None
        if adapter_path is not None:
            if int8:
                raise LoraXSError("--int8 and --adapter: the shared base graph is fp32 only")
            if not description.get("adapter_inputs") or not description.get("basis_fingerprint"):
                raise LoraXSError(f"{folder.path} has no adapter base graph; export with --onnx-adapter")
            model = folder.model_file("adapter-base")
            own = description.get("onnx_adapter") or {}
            self.adapter = load_onnx_adapter(
                adapter_path,
                description["adapter_inputs"],
                description["basis_fingerprint"],
                sha256=own.get("sha256") if Path(adapter_path).name == own.get("file") else None,
            )
        else:
            model = folder.model_file("int8" if int8 else "fp32")
        self.model = model
        self.session = load_session(model, threads)
        check_session(self.session, folder, model, self.adapter)
        self.tokenizer = make_tokenizer(folder)
        self.names, self.output = list(description["inputs"]), description["output"]["name"]
        self.labels = description["labels"]

    def __call__(self, texts: list[str]) -> list[tuple[str, float]]:
        results = []
        for start in range(0, len(texts), BATCH_SIZE):
            feed = encode(self.tokenizer, texts[start : start + BATCH_SIZE], self.names)
            try:
                if self.adapter is None:
                    logits = self.session.run([self.output], feed)[0]  # (B, C)
                else:
                    logits = run_with_adapter(self.session, self.output, feed, self.adapter)
            except LoraXSError:
                raise
            except Exception as err:
                raise LoraXSError(f"{self.model} cannot run this input: {_first_line(err)}") from None
            if logits.shape != (len(feed[self.names[0]]), len(self.labels)) or not np.isfinite(logits).all():
                raise LoraXSError(
                    f"{self.model} gave logits of shape {list(logits.shape)} (finite: "
                    f"{bool(np.isfinite(logits).all())}), not one finite logit per label "
                    f"({len(self.labels)})"
                )
            scores = softmax(logits.astype(np.float64))
            results += [(self.labels[int(i)], float(scores[row, i])) for row, i in enumerate(scores.argmax(-1))]
        return results


def predict(
    folder: ModelFolder, texts: list[str], adapter_path: str | None = None, int8: bool = False, threads: int = 0
) -> list[tuple[str, float]]:
    """-> (label, softmax score) per text."""
    return Classifier(folder, adapter_path, int8, threads)(texts)


def read_texts(args: argparse.Namespace) -> Iterator[str]:
    """TEXT..., or the non-blank lines of --input read one at a time (at most MAX_INPUT_BYTES,
    MAX_LINE_BYTES a line; a regular file or stdin, never a pipe or device named as a file)."""
    if args.input is None:
        yield from args.texts
        return
    source = "stdin" if args.input == "-" else args.input
    handle = (
        sys.stdin.buffer
        if args.input == "-"
        else open_regular(Path(args.input).expanduser(), "--input", MAX_INPUT_BYTES)
    )
    try:
        yield from (line for line in bounded_lines(handle, source, MAX_INPUT_BYTES, MAX_LINE_BYTES) if line.strip())
    finally:
        if args.input != "-":
            handle.close()


def batches(texts: Iterable[str], size: int = BATCH_SIZE) -> Iterator[list[str]]:
    batch = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m client.predict", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, metavar="DIR", help="a `python -m client.export` output folder")
    parser.add_argument("--adapter", metavar="FILE", help="a user's .onnx_adapter, run on the shared base graph")
    parser.add_argument("--int8", action="store_true", help="run the int8 model instead of fp32 (no --adapter)")
    parser.add_argument("--input", metavar="FILE", help="read the texts from FILE, one a line (- for stdin)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default: its own choice)")
    parser.add_argument("texts", nargs="*", metavar="TEXT")
    args = parser.parse_args(argv)
    refuse_blank_values(parser, args)
    if bool(args.texts) == (args.input is not None):
        parser.error("give either TEXT... or --input FILE")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def work() -> int:
        check_threads(args.threads)
        folder = open_model_folder(args.model_dir)
        classify = Classifier(folder, args.adapter, args.int8, args.threads)
        count = 0
        for texts in batches(read_texts(args)):
            for text, (label, score) in zip(texts, classify(texts)):
                print(f"{label}\t{score:.4f}\t{text}")
            count += len(texts)
        if not count:
            raise LoraXSError(f"--input {args.input} holds no text")
        return 0

    return run_cli(work, prog="client.predict")


if __name__ == "__main__":
    sys.exit(main())
