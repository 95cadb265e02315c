"""Export a personalized model to ONNX, verified with onnxruntime.

    python -m client.export --adapter PERSONAL.safetensors --out model.onnx [--model M]
                            [--basis FILE] [--quantize int8] [--adapter-as-input] [--onnx-adapter] [--opset N]
                            [--data DIR] [--timing [--repeats N]] [--max-length N]
    python -m client.export --training DIR [--adapter FILE | --model M --rank R] [--basis FILE] [--train-blocks N] [--force]

Writes the merged fp32 model, optionally its int8 quantization and the adapter-as-input graph,
the tokenizer files and `<stem>.export.json` into the folder of --out; prints the files and the max
abs differences against PyTorch (with --timing also PyTorch's and onnxruntime's latencies). User errors and a failed fp32 parity check
print one line to stderr and exit non-zero, writing nothing.
"""

import argparse
import sys

from client.adapter_key import add_key_flags, key_source
from client.onnx.graph import file_size
from client.onnx.job import QUANTIZE_CHOICES, ExportConfig, ExportReport, run_export
from client.onnx.verify import FP32_TOLERANCE, LATENCY_BATCH, LATENCY_LENGTH
from shared.cli import refuse_blank_values, run_cli
from shared.data.batches import DEFAULT_MAX_LENGTH
from shared.recipe.config import PersonalTrainingConfig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m client.export",
        description="Merge a LoRA-XS adapter into its base model and export it to ONNX, verified with onnxruntime.",
    )
    parser.add_argument("--adapter", metavar="FILE", help="the personal adapter (.safetensors)")
    parser.add_argument("--out", metavar="FILE", help="the merged model to write (.onnx); a missing folder is created")
    parser.add_argument("--model", help="base model id or folder; must be the adapter's (default: from the adapter)")
    parser.add_argument("--basis", metavar="FILE", help="the factor bundle the adapter was trained with")
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, help="also write an onnxruntime dynamic int8 model")
    parser.add_argument(
        "--adapter-as-input",
        action="store_true",
        help="also write one graph taking the r x r matrices and the head as inputs",
    )
    parser.add_argument(
        "--onnx-adapter",
        action="store_true",
        help="also write the shared base graph and this adapter as an onnxruntime .onnx_adapter",
    )
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--data", metavar="DIR", help="data folder: accuracy on its test split; its factor cache")
    parser.add_argument("--timing", action="store_true", help="also time PyTorch against onnxruntime (off by default)")
    parser.add_argument(
        "--repeats", type=int, default=20, help="with --timing: timed runs per latency median (default 20)"
    )
    parser.add_argument(
        "--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="tokens per text for --data (default %(default)s)"
    )
    training = parser.add_argument_group("training artifacts (--training)")
    training.add_argument(
        "--training",
        metavar="DIR",
        help=(
            "write the training-step and feature graphs a device trains with (onnxruntime only) to DIR, "
            "for the factors of --adapter, or of --model at --rank"
        ),
    )
    training.add_argument("--rank", type=int, help="LoRA-XS rank without --adapter (default 16)")
    training.add_argument("--task", choices=("seq-cls", "causal-lm"), help="without --adapter (default seq-cls)")
    training.add_argument(
        "--train-blocks",
        type=int,
        help=(
            "also write graphs split below the top N transformer blocks: a device training only their R "
            "(client.run --train-blocks N) runs the blocks below once per text (default: the recipe's, "
            f"{PersonalTrainingConfig().train_blocks})"
        ),
    )
    training.add_argument("--force", action="store_true", help="replace the training artifacts already in DIR")
    add_key_flags(parser, encrypt=False)
    args = parser.parse_args(argv)
    refuse_blank_values(parser, args)  # --model '' is no default, --adapter '' no "none"
    if args.training is None:
        missing = [flag for flag, value in (("--adapter", args.adapter), ("--out", args.out)) if value is None]
        if missing:
            parser.error(f"the following arguments are required: {', '.join(missing)} (or --training DIR)")
        given = [
            flag
            for flag, value in (("--rank", args.rank), ("--task", args.task), ("--train-blocks", args.train_blocks))
            if value is not None
        ]
        if given or args.force:
            parser.error(f"{', '.join(given + (['--force'] if args.force else []))}: only with --training DIR")
    elif args.out is not None:
        parser.error("--out: the merged-model export; --training DIR writes its own files")
    return args


def export_config(args: argparse.Namespace) -> ExportConfig:
    return ExportConfig(
        adapter=args.adapter,
        out=args.out,
        model=args.model,
        basis_file=args.basis,
        data_dir=args.data,
        quantize=args.quantize,
        adapter_as_input=args.adapter_as_input,
        onnx_adapter=args.onnx_adapter,
        opset=args.opset,
        timing=args.timing,
        repeats=args.repeats,
        max_length=args.max_length,
        key_source=key_source(args, args.adapter),
    )


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.1f} MiB" if num_bytes >= 2**20 else f"{num_bytes / 2**10:.1f} KiB"


def print_report(report: ExportReport) -> None:
    meta = report.meta
    print(
        f"base model {meta.base_model}, task {meta.task}, rank {meta.rank}, "
        f"factors from {report.factors_source} (basis {meta.basis_fingerprint[:12]}), opset {report.opset}"
    )
    print("files:")
    for kind, path in report.files.items():
        if not kind.startswith("tokenizer:"):
            print(f"  {kind:<14} {_size(file_size(path)):>11}  {path}")
    tokenizer = [p for kind, p in report.files.items() if kind.startswith("tokenizer:")]
    print(
        f"  {'tokenizer':<14} {_size(sum(file_size(p) for p in tokenizer)):>11}  {', '.join(p.name for p in tokenizer)}"
    )
    print(f"max abs difference of the logits (fp32 limit {FP32_TOLERANCE:g}):")
    for what, diff in report.diffs.items():
        print(f"  {diff:9.2e}  {what}")
    if report.latency_ms:
        print(
            f"latency, batch {LATENCY_BATCH} x sequence {LATENCY_LENGTH}, median of {report.repeats} runs, "
            f"{report.threads} threads:"
        )
    for runtime, ms in report.latency_ms.items():
        print(f"  {ms:9.2f} ms  {runtime}")
    if report.accuracy:
        line = ", ".join(f"{kind} {acc:.4f}" for kind, acc in report.accuracy.items())
        if "int8" in report.accuracy:
            line += f" (int8 - fp32: {report.accuracy['int8'] - report.accuracy['fp32']:+.4f})"
        print(f"onnxruntime accuracy on {report.test_examples} test examples: {line}")


def training_config(args: argparse.Namespace):
    from client.onnx_training.export import TrainingExportConfig

    return TrainingExportConfig(
        out_dir=args.training,
        adapter=args.adapter,
        model=args.model,
        rank=args.rank,
        task=args.task or "seq-cls",
        basis_file=args.basis,
        opset=args.opset,
        force=args.force,
        **({"train_blocks": args.train_blocks} if args.train_blocks is not None else {}),
        key_source=key_source(args, args.adapter) if args.adapter else None,
    )


def print_training_report(done) -> None:
    meta = done.meta
    print(
        f"base model {meta.base_model}, task {meta.task}, rank {meta.rank}, "
        f"factors from {done.factors_source} (basis {meta.basis_fingerprint[:12]}), opset {done.opset}"
    )
    print("files:")
    for path in done.files.values():
        print(f"  {_size(path.stat().st_size):>11}  {path}")
    print("max abs difference, onnxruntime vs PyTorch:")
    for what, diff in done.diffs.items():
        print(f"  {diff:9.2e}  {what}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def work() -> int:
        if args.training is not None:
            from client.onnx_training.export import run_training_export

            print_training_report(run_training_export(training_config(args)))
            return 0
        print_report(run_export(export_config(args)))
        return 0

    return run_cli(work)


if __name__ == "__main__":
    sys.exit(main())
