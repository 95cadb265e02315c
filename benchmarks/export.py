"""ONNX export of personalized MiniLMs: file sizes, parity, latency and int8 accuracy.

    python -m benchmarks.export                    # rotten-tomatoes + the small real folders
    python -m benchmarks.export --folders rotten   # one of them
    python -m benchmarks.export --train 0          # a seeded random adapter instead (no training)

Each folder (rotten: 1,000 rotten-tomatoes reviews to train on, 500 held out; debates, debian,
convention: `benchmarks.small_folders`) gets a properly trained adapter: `personalize`, the
`client.run` recipe with its defaults (validation split, early stopping). Then the export
(`run_export`, what `python -m client.export` runs) with --quantize int8 --onnx-adapter --data,
latency at batch 1 and 32 x sequence 64. `--work DIR` keeps the folders and their adapters and
reuses an adapter already there. Writes benchmarks/results/export.json and export.md.
"""

import argparse
import json
import platform
import shutil
import tempfile
from pathlib import Path

import torch

from benchmarks.result_files import command_line, goal, load_average, machine_now, write_result
from client.onnx.graph import file_size
from client.onnx.job import ExportConfig, ExportReport, run_export
from client.onnx.verify import LATENCY_LENGTH
from client.personalization import PersonalizationConfig, personalize
from shared.artifacts.adapter_file import (
    adapter_meta,
    save_adapter,
)
from shared.artifacts.cache import user_cache_dir
from shared.base_models import (
    DEFAULT_MODEL,
    build_adapted_model,
)
from shared.data.catalog import load_dataset
from shared.data.local_folder import load_local_folder
from shared.loraxs.config import LoraXSConfig
from shared.loraxs.model import adapter_state

RANDOM_ADAPTER_STD = 0.05  # the order of trained R entries
FOLDERS = ("rotten", "debates", "debian", "convention")
LATENCY_BATCHES = (1, 32)
ADAPTER_NAME = "personal_adapter.safetensors"  # client.run's default --out


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


def prepare_folder(name: str, folder: Path, args) -> None:
    """The folder's train/test files (once): rotten-tomatoes reviews, or a copy of a small folder."""
    if (folder / "train.jsonl").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    if name == "rotten":
        write_data_folder(folder, max(args.train, 1000), args.test, args.seed)
        return
    source = user_cache_dir() / "small_folders" / name
    if not (source / "train.jsonl").exists():
        from benchmarks.small_folders import build_folders

        build_folders(source.parent)
    for split in ("train.jsonl", "test.jsonl"):
        shutil.copyfile(source / split, folder / split)


def adapter_for(name: str, folder: Path, args) -> tuple[Path, str, float | None]:
    """-> the adapter, what it is, its PyTorch accuracy on the test split (None when reused)."""
    adapter = folder / ADAPTER_NAME
    if not args.train:
        random_adapter(folder, adapter, args.seed)
        return adapter, f"seeded random adapter, R ~ N(0, {RANDOM_ADAPTER_STD}^2)", None
    if adapter.exists():
        return adapter, "trained by the client.run recipe (reused from --work)", None
    trained = personalize(PersonalizationConfig(data_dir=folder, out=adapter, seed=args.seed, progress=False))
    return adapter, "trained by the client.run recipe", trained.after.accuracy


def results(report: ExportReport, torch_accuracy: float | None, adapter: str) -> dict:
    sizes = {kind: file_size(path) for kind, path in report.files.items() if not kind.startswith("tokenizer:")}
    sizes["tokenizer"] = sum(file_size(p) for k, p in report.files.items() if k.startswith("tokenizer:"))
    accuracy = {f"onnxruntime {kind}": round(acc, 4) for kind, acc in report.accuracy.items()}
    if torch_accuracy is not None:
        accuracy["PyTorch (adapter, unmerged)"] = round(torch_accuracy, 4)
    latency = report.latency_ms
    ratios = {}
    for suffix, batch in (("", 1), (", batch 32", 32)):
        eager = latency.get(f"PyTorch eager, adapter unmerged{suffix}")
        for kind in ("fp32", "int8"):
            ms = latency.get(f"onnxruntime {kind}, merged{suffix}")
            if eager and ms:
                ratios[f"{kind} / PyTorch, batch {batch}"] = round(ms / eager, 3)
    return {
        "adapter": adapter,
        "labels": list(report.meta.labels or []),
        "file_bytes": sizes,
        "max_abs_diff": {what: float(f"{diff:.3g}") for what, diff in report.diffs.items()},
        "latency_ms": {runtime: round(ms, 2) for runtime, ms in latency.items()},
        "latency_vs_pytorch": ratios,
        "accuracy": accuracy,
        "accuracy_int8_minus_fp32": round(report.accuracy["int8"] - report.accuracy["fp32"], 4),
        "test_examples": report.test_examples,
        "opset": report.opset,
    }


GOALS = "fp32 <= 0.7x PyTorch latency, int8 <= 0.4x, int8 accuracy drop <= 1 point"


def export_goals(per_folder: dict) -> list[dict]:
    """The three goals of GOALS, each on its worst folder (latency: batch 1 and 32)."""

    def worst(key: str) -> tuple[str, float]:
        found = [
            (f"{name}, {k.split(', ')[1]}", r)
            for name, res in per_folder.items()
            for k, r in res["latency_vs_pytorch"].items()
            if k.startswith(key)
        ]
        return max(found, key=lambda item: item[1]) if found else ("not measured", float("inf"))

    out = []
    for kind, limit in (("fp32", 0.7), ("int8", 0.4)):
        where, ratio = worst(f"{kind} / PyTorch")
        out.append(
            goal(
                f"onnxruntime {kind} latency <= {limit}x PyTorch eager",
                f"worst {ratio:.2f}x ({where})",
                ratio <= limit,
                "onnxruntime's kernels on 2 cores; see benchmarks/studies/results/int8_recipes.md",
            )
        )
    drops = {name: -100 * res["accuracy_int8_minus_fp32"] for name, res in per_folder.items()}
    name = max(drops, key=drops.get)
    out.append(
        goal(
            "int8 accuracy drop <= 1 point on trained adapters",
            f"worst {-drops[name]:+.1f} points ({name}); " + ", ".join(f"{n} {-d:+.1f}" for n, d in drops.items()),
            drops[name] <= 1.0,
            "quantization error on the decision boundary; see int8_recipes",
        )
    )
    return out


def markdown(per_folder: dict, config: dict, machine: dict) -> str:
    mib = lambda n: f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"
    first = next(iter(per_folder.values()))
    lines = [
        "# ONNX export of personalized MiniLMs: int8 accuracy and latency",
        "",
        f"Measured {config['date']} on {config['machine']} ({config['cpu_threads']} threads for PyTorch and "
        f"onnxruntime), {config['model']}, rank 16, opset {first['opset']}, torch {config['torch']}, "
        f"onnxruntime {config['onnxruntime']}. Latency: batch 1 and 32 x sequence {LATENCY_LENGTH}, median of "
        f"{config['repeats']} runs after 2 warm-up runs; 1-minute load average {machine['load_average_before']} "
        f"at the start, {machine['load_average_after']} at the end. int8 recipe: {config['int8_recipe']}. "
        f"Command: `{config['command']}`.",
        "",
        f"Goals: {GOALS}.",
        "",
        "| folder | labels | test texts | PyTorch | onnxruntime fp32 | int8 | int8 - fp32 | fp32 / PyTorch b1, b32 | int8 / PyTorch b1, b32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in per_folder.items():
        acc, ratio = res["accuracy"], res["latency_vs_pytorch"]
        torch_acc = acc.get("PyTorch (adapter, unmerged)")
        lines.append(
            f"| {name} | {len(res['labels'])} | {res['test_examples']} | "
            f"{'—' if torch_acc is None else f'{torch_acc:.4f}'} | {acc['onnxruntime fp32']:.4f} | "
            f"{acc['onnxruntime int8']:.4f} | {100 * res['accuracy_int8_minus_fp32']:+.1f} pts | "
            f"{ratio.get('fp32 / PyTorch, batch 1', float('nan')):.2f}x, {ratio.get('fp32 / PyTorch, batch 32', float('nan')):.2f}x | "
            f"{ratio.get('int8 / PyTorch, batch 1', float('nan')):.2f}x, {ratio.get('int8 / PyTorch, batch 32', float('nan')):.2f}x |"
        )
    lines += [
        "",
        f"Latency of the first folder ({next(iter(per_folder))}):",
        "",
        "| runtime | latency (ms) |",
        "|---|---:|",
        *[f"| {runtime} | {ms:.2f} |" for runtime, ms in first["latency_ms"].items()],
        "",
        "| file | size |",
        "|---|---:|",
        *[f"| {kind} | {mib(n)} |" for kind, n in first["file_bytes"].items()],
        "",
        "| max abs difference of the logits | value |",
        "|---|---:|",
        *[f"| {what} | {diff:.2e} |" for what, diff in first["max_abs_diff"].items()],
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", nargs="+", choices=FOLDERS, default=list(FOLDERS))
    parser.add_argument(
        "--train", type=int, default=1000, help="rotten-tomatoes reviews to train on (0 = random adapter)"
    )
    parser.add_argument("--test", type=int, default=500, help="held-out rotten-tomatoes reviews")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per latency median")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="keep the folders and adapters here (reused when present)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    machine = machine_now()  # its load average: other work on the machine skews the latencies
    per_folder = {}
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        work = args.work or Path(tmp)
        for name in args.folders:
            folder = work / name
            prepare_folder(name, folder, args)
            adapter, kind, torch_accuracy = adapter_for(name, folder, args)
            report = run_export(
                ExportConfig(
                    adapter=adapter,
                    out=Path(tmp) / name / "model.onnx",
                    data_dir=folder,
                    quantize="int8",
                    onnx_adapter=True,
                    timing=True,
                    repeats=args.repeats,
                    latency_batches=LATENCY_BATCHES,
                )
            )
            per_folder[name] = results(report, torch_accuracy, kind)
            print(
                name,
                json.dumps(per_folder[name]["accuracy"]),
                json.dumps(per_folder[name]["latency_vs_pytorch"]),
                flush=True,
            )

    import onnxruntime

    from client.onnx.graph import INT8_RECIPE

    config = {
        "command": command_line("benchmarks.export", argv),
        "model": DEFAULT_MODEL,
        "repeats": args.repeats,
        "seed": args.seed,
        "int8_recipe": INT8_RECIPE,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "date": machine["date"],
    }
    machine["load_average_after"] = load_average()
    text = markdown(per_folder, config, machine)
    write_result(
        Path(args.out),
        "export",
        {
            "command": config["command"],
            "machine": machine,
            "config": config,
            "results": per_folder,
            "goals": export_goals(per_folder),
        },
        text,
    )
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
