"""Classify texts with an exported model folder: onnxruntime and tokenizers only, no PyTorch.

    python -m client.predict --model-dir DIR [--adapter USER.onnx_adapter] [--int8] TEXT...
    python -m client.predict --model-dir DIR [--adapter USER.onnx_adapter] --input FILE

DIR is what `python -m client.export` wrote (`<stem>.export.json`, the ONNX files, tokenizer.json).
Without --adapter the merged model runs (or its int8 quantization with --int8); with --adapter
the shared base graph (`--onnx-adapter` export) runs with that user's `.onnx_adapter` active.
Prints one line per text: label, its softmax score, the text. --input FILE reads one text a line
(`-` for stdin). Bad input prints one line to stderr and exits 1.

This module must import neither torch nor transformers (tests/test_predict.py checks): a device
or a serving process pays for onnxruntime and a tokenizer, nothing more.
"""

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.onnx.onnx_adapter import LoadedAdapter, load_onnx_adapter, run_with_adapter
from shared.cli import run_cli
from shared.errors import LoraXSError

BATCH_SIZE = 32
DESCRIPTION_GLOB = "*.export.json"


@dataclass
class ModelFolder:
    path: Path
    description: dict

    def model_file(self, kind: str) -> Path:
        name = (self.description.get("models") or {}).get(kind)
        hint = {"int8": "export with --quantize int8", "adapter-base": "export with --onnx-adapter"}.get(kind, "")
        if not name or not (self.path / name).is_file():
            raise LoraXSError(f"{self.path} holds no {kind} model{'; ' + hint if hint else ''}")
        return self.path / name


def open_model_folder(path: str | Path) -> ModelFolder:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise LoraXSError(f"model folder {folder} does not exist")
    found = sorted(folder.glob(DESCRIPTION_GLOB))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise LoraXSError(f"{folder} holds {what} {DESCRIPTION_GLOB} export description(s); "
                          "point --model-dir at one `python -m client.export` output folder")
    try:
        description = json.loads(found[0].read_text())
    except (OSError, ValueError) as err:
        raise LoraXSError(f"cannot read {found[0]}: {err}") from None
    if not isinstance(description, dict) or description.get("format") != "loraxs-onnx-export":
        raise LoraXSError(f"{found[0]} is not a client.export description")
    if description.get("task") != "seq-cls" or not description.get("labels"):
        raise LoraXSError(f"{folder} holds a {description.get('task')} export; client.predict classifies (seq-cls)")
    return ModelFolder(folder, description)


def make_tokenizer(folder: ModelFolder):
    from tokenizers import Tokenizer

    path = folder.path / "tokenizer.json"
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception on a missing or broken file
        raise LoraXSError(f"cannot read the tokenizer {path}: {str(err).splitlines()[0] if str(err) else err}") from None
    pad_token = "[PAD]"
    config = folder.path / "tokenizer_config.json"
    if config.is_file():
        pad_token = json.loads(config.read_text()).get("pad_token") or pad_token
    pad_id = tokenizer.token_to_id(pad_token) if isinstance(pad_token, str) else None
    tokenizer.enable_truncation(int(folder.description["max_length"]))
    tokenizer.enable_padding(pad_id=pad_id or 0, pad_token=pad_token if isinstance(pad_token, str) else "[PAD]")
    return tokenizer


def encode(tokenizer, texts: list[str], input_names: list[str]) -> dict[str, np.ndarray]:
    encodings = tokenizer.encode_batch(texts)
    arrays = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
              "token_type_ids": [e.type_ids for e in encodings]}
    return {name: np.array(arrays[name], dtype=np.int64) for name in input_names}  # each (B, T)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))  # (B, C)
    return shifted / shifted.sum(-1, keepdims=True)


def predict(folder: ModelFolder, texts: list[str], adapter_path: str | None = None, int8: bool = False,
            threads: int = 0) -> list[tuple[str, float]]:
    """-> (label, softmax score) per text."""
    import onnxruntime as ort

    description = folder.description
    adapter: LoadedAdapter | None = None
    if adapter_path is not None:
        if int8:
            raise LoraXSError("--int8 and --adapter: the shared base graph is fp32 only")
        model = folder.model_file("adapter-base")
        adapter = load_onnx_adapter(adapter_path, description.get("adapter_inputs") or {},
                                    str(description.get("basis_fingerprint", "")))
    else:
        model = folder.model_file("int8" if int8 else "fp32")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    tokenizer = make_tokenizer(folder)
    names, output, labels = list(description["inputs"]), description["output"]["name"], description["labels"]
    results = []
    for start in range(0, len(texts), BATCH_SIZE):
        feed = encode(tokenizer, texts[start:start + BATCH_SIZE], names)
        if adapter is None:
            logits = session.run([output], feed)[0]  # (B, C)
        else:
            logits = run_with_adapter(session, output, feed, adapter)
        scores = softmax(logits.astype(np.float64))
        results += [(labels[int(i)], float(scores[row, i])) for row, i in enumerate(scores.argmax(-1))]
    return results


def read_texts(args: argparse.Namespace) -> list[str]:
    if args.input is None:
        return args.texts
    try:
        raw = sys.stdin.read() if args.input == "-" else Path(args.input).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LoraXSError(f"cannot read --input {args.input}: {getattr(err, 'strerror', None) or err}") from None
    return [line for line in raw.splitlines() if line.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m client.predict", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, metavar="DIR", help="a `python -m client.export` output folder")
    parser.add_argument("--adapter", metavar="FILE", help="a user's .onnx_adapter, run on the shared base graph")
    parser.add_argument("--int8", action="store_true", help="run the int8 model instead of fp32 (no --adapter)")
    parser.add_argument("--input", metavar="FILE", help="read the texts from FILE, one a line (- for stdin)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default: its own choice)")
    parser.add_argument("texts", nargs="*", metavar="TEXT")
    args = parser.parse_args(argv)
    if bool(args.texts) == (args.input is not None):
        parser.error("give either TEXT... or --input FILE")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def work() -> int:
        folder = open_model_folder(args.model_dir)
        texts = read_texts(args)
        if not texts:
            raise LoraXSError(f"--input {args.input} holds no text")
        for text, (label, score) in zip(texts, predict(folder, texts, args.adapter, args.int8, args.threads)):
            print(f"{label}\t{score:.4f}\t{text}")
        return 0

    return run_cli(work, prog="client.predict")


if __name__ == "__main__":
    sys.exit(main())
