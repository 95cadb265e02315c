"""ONNX export of a personalized MiniLM: file sizes, parity, latency and int8 accuracy.

    python benchmarks/export.py                  # adapter trained on 1,000 rotten-tomatoes reviews
    python benchmarks/export.py --train 0        # a seeded random adapter instead (no training)

Builds a data folder of rotten-tomatoes reviews (train.jsonl / test.jsonl), personalizes a
default-config adapter on it with the on-device client (`personalize`), then runs the export
(`run_export`, what `python -m client.export` runs) with --quantize int8 --adapter-as-input --data.
Writes benchmarks/results/export.json and export.md.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from client.onnx.job import ExportConfig, ExportReport, run_export  # noqa: E402
from client.personalization import PersonalizationConfig, personalize  # noqa: E402
from client.onnx.graph import file_size  # noqa: E402
from client.onnx.verify import LATENCY_BATCH, LATENCY_LENGTH  # noqa: E402
from shared.artifacts.adapter_file import adapter_meta  # noqa: E402
from shared.base_models import build_adapted_model  # noqa: E402
from shared.artifacts.adapter_file import save_adapter  # noqa: E402
from shared.data.catalog import load_dataset  # noqa: E402
from shared.data.local_folder import load_local_folder  # noqa: E402
from shared.loraxs.config import LoraXSConfig  # noqa: E402
from shared.loraxs.model import adapter_state  # noqa: E402
from shared.base_models import DEFAULT_MODEL  # noqa: E402

RANDOM_ADAPTER_STD = 0.05  # the order of trained R entries


def write_data_folder(folder: Path, train: int, test: int, seed: int) -> None:
    """train.jsonl / test.jsonl of rotten-tomatoes reviews, labels by name (as a user writes them)."""
    splits = load_dataset("rotten-tomatoes", "seq-cls", seed=seed)
    for name, split, count in (("train", splits.train, max(train, 1)), ("test", splits.test, test)):
        rows = split.select(range(min(count, len(split))))
        lines = [json.dumps({"text": r["text"], "label": splits.labels[r["label"]]}) for r in rows]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")


def random_adapter(data: Path, path: Path, seed: int) -> None:
    labels = load_local_folder(data, "seq-cls", seed=seed).labels
    config = LoraXSConfig()
    model, basis = build_adapted_model(DEFAULT_MODEL, "seq-cls", config, labels=labels, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * RANDOM_ADAPTER_STD)
    save_adapter(path, adapter_state(model), adapter_meta(DEFAULT_MODEL, "seq-cls", config, basis, labels))


def results(report: ExportReport, torch_accuracy: float | None) -> dict:
    sizes = {kind: file_size(path) for kind, path in report.files.items() if not kind.startswith("tokenizer:")}
    sizes["tokenizer"] = sum(file_size(p) for k, p in report.files.items() if k.startswith("tokenizer:"))
    accuracy = {f"onnxruntime {kind}": round(acc, 4) for kind, acc in report.accuracy.items()}
    if torch_accuracy is not None:
        accuracy["PyTorch (adapter, unmerged)"] = round(torch_accuracy, 4)
    return {
        "file_bytes": sizes,
        "max_abs_diff": {what: float(f"{diff:.3g}") for what, diff in report.diffs.items()},
        "latency_ms": {runtime: round(ms, 2) for runtime, ms in report.latency_ms.items()},
        "accuracy": accuracy,
        "accuracy_int8_minus_fp32": round(report.accuracy["int8"] - report.accuracy["fp32"], 4),
        "test_examples": report.test_examples,
        "opset": report.opset,
    }


def markdown(res: dict, config: dict) -> str:
    mib = lambda n: f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"  # noqa: E731
    latency = res["latency_ms"]
    eager = latency["PyTorch eager, adapter unmerged"]
    lines = [
        f"# ONNX export of a personalized MiniLM ({config['adapter']})",
        "",
        f"Measured {config['date']} on {config['machine']} ({config['cpu_threads']} threads for PyTorch and "
        f"onnxruntime), {config['model']}, rank 16, opset {res['opset']}, torch {config['torch']}, "
        f"onnxruntime {config['onnxruntime']}. Latency: batch {LATENCY_BATCH} x sequence {LATENCY_LENGTH}, "
        f"median of {config['repeats']} runs after 2 warm-up runs; 1-minute load average "
        f"{config['load_average_1min']['start']} at the start, {config['load_average_1min']['end']} at the end. "
        f"Command: `{config['command']}`.",
        "",
        "| runtime | latency (ms) | vs PyTorch eager |",
        "|---|---:|---:|",
        *[f"| {runtime} | {ms:.2f} | {eager / ms:.2f}x |" for runtime, ms in latency.items()],
        "",
        "| file | size |",
        "|---|---:|",
        *[f"| {kind} | {mib(n)} |" for kind, n in res["file_bytes"].items()],
        "",
        "| max abs difference of the logits | value |",
        "|---|---:|",
        *[f"| {what} | {diff:.2e} |" for what, diff in res["max_abs_diff"].items()],
        "",
        f"Accuracy on {res['test_examples']} held-out reviews: "
        + ", ".join(f"{k} {v:.4f}" for k, v in res["accuracy"].items())
        + f"; int8 - fp32 = {res['accuracy_int8_minus_fp32']:+.4f}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1000, help="reviews to personalize on (0 = random adapter)")
    parser.add_argument("--test", type=int, default=500, help="held-out reviews for the accuracy check")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per latency median")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    load_at_start = round(os.getloadavg()[0], 2)  # other work on the machine skews the latencies

    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        data, adapter = Path(tmp) / "data", Path(tmp) / "personal.safetensors"
        data.mkdir()
        write_data_folder(data, args.train, args.test, args.seed)
        torch_accuracy = None
        if args.train:
            trained = personalize(PersonalizationConfig(data_dir=data, out=adapter, epochs=args.epochs,
                                                        seed=args.seed, progress=False))
            torch_accuracy = trained.after.accuracy
            kind = f"trained on {args.train} rotten-tomatoes reviews, {args.epochs:g} epoch(s)"
        else:
            random_adapter(data, adapter, args.seed)
            kind = f"seeded random adapter, R ~ N(0, {RANDOM_ADAPTER_STD}^2)"
        report = run_export(ExportConfig(adapter=adapter, out=Path(tmp) / "model.onnx", data_dir=data,
                                         quantize="int8", adapter_as_input=True, repeats=args.repeats))
        res = results(report, torch_accuracy)

    import onnxruntime

    config = {
        "command": " ".join(["python benchmarks/export.py", *(argv if argv is not None else sys.argv[1:])]),
        "model": DEFAULT_MODEL, "adapter": kind, "repeats": args.repeats, "seed": args.seed,
        "cpu_threads": torch.get_num_threads(), "machine": platform.machine(),
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_1min": {"start": load_at_start, "end": round(os.getloadavg()[0], 2)},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "export.json").write_text(json.dumps({"config": config, "results": res}, indent=2) + "\n")
    (out / "export.md").write_text(markdown(res, config))
    print(markdown(res, config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
