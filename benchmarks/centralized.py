"""Centralized LoRA-XS on rotten-tomatoes, side by side with baselines measured in the same run.

    python benchmarks/centralized.py                       # LoRA-XS, LoRA r=8 (peft), full fine-tuning
    python benchmarks/centralized.py --methods loraxs      # LoRA-XS only

Writes benchmarks/results/centralized.json and centralized.md: held-out accuracy, trainable
parameters, adapter bytes (what a client would send), training examples/s, and ratios vs LoRA-XS.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.artifacts.adapter_file import adapter_meta  # noqa: E402
from shared.base_models import build_adapted_model  # noqa: E402
from shared.artifacts.adapter_file import adapter_to_bytes  # noqa: E402
from shared.data.batches import make_loader  # noqa: E402
from shared.data.catalog import load_dataset  # noqa: E402
from shared.loraxs.config import BERT_TARGETS, LoraXSConfig  # noqa: E402
from shared.base_models import DEFAULT_MODEL, load_base_model, load_tokenizer  # noqa: E402
from shared.training import TrainConfig, evaluate, train  # noqa: E402

METHODS = ("loraxs", "lora", "full")
DEFAULT_LR = {"loraxs": 2e-3, "lora": 5e-4, "full": 5e-5}


def build(method: str, labels: list[str], seed: int):
    """-> (model, serialized bytes of what would travel / be saved for this method)."""
    if method == "loraxs":
        config = LoraXSConfig()
        model, basis = build_adapted_model(DEFAULT_MODEL, "seq-cls", config, labels, seed=seed)
        meta = adapter_meta(DEFAULT_MODEL, "seq-cls", config, basis, labels)
        return model, lambda m: len(adapter_to_bytes(_trainable_state(m), meta))
    model = load_base_model(DEFAULT_MODEL, "seq-cls", len(labels), seed)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=8, lora_alpha=16, target_modules=list(BERT_TARGETS), lora_dropout=0.0,
                          modules_to_save=["classifier"], task_type="SEQ_CLS")
        model = get_peft_model(model, lora)
    from safetensors.torch import save

    return model, lambda m: len(save(_trainable_state(m)))


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def run_method(method, splits, tokenizer, args) -> dict:
    torch.manual_seed(args.seed)
    model, adapter_bytes = build(method, splits.labels, args.seed)
    train_loader = make_loader(splits.train, tokenizer, "seq-cls", args.batch_size,
                               args.max_length, shuffle=True, seed=args.seed)
    test_loader = make_loader(splits.test, tokenizer, "seq-cls", 64, args.max_length)
    lr = args.lr or DEFAULT_LR[method]
    result = train(model, train_loader, TrainConfig(epochs=args.epochs, lr=lr),
                   progress=True, desc=method)
    evaluation = evaluate(model, test_loader, progress=True)
    return {
        "method": method,
        "accuracy": round(evaluation.accuracy, 4),
        "test_examples": evaluation.examples,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "adapter_bytes": adapter_bytes(model),
        "train_examples_per_second": round(result.examples_per_second, 2),
        "train_seconds": round(result.seconds, 1),
        "train_loss": round(result.loss, 4),
        "lr": lr,
    }


def markdown(results: list[dict], config: dict) -> str:
    base = next((r for r in results if r["method"] == "loraxs"), results[0])
    lines = [
        f"# Centralized fine-tuning on rotten-tomatoes ({config['train_examples']} train / "
        f"{config['test_examples']} test, {config['epochs']} epochs, batch {config['batch_size']}, "
        f"max length {config['max_length']}, {config['cpu_threads']} CPU threads)",
        "",
        "| method | accuracy | trainable params | adapter bytes | train ex/s | speed vs LoRA-XS |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        speed = r["train_examples_per_second"] / base["train_examples_per_second"]
        lines.append(
            f"| {r['method']} | {r['accuracy']:.4f} | {r['trainable_parameters']:,} | "
            f"{r['adapter_bytes']:,} | {r['train_examples_per_second']:.1f} | {speed:.2f}x |"
        )
    lines.append("")
    lines.append(f"Command: `{config['command']}` ({config['date']}; 1-minute load average "
                 f"{config['load_average_start']} at the start, {config['load_average_end']} at the end: "
                 "other work on the machine slows every method alike only when it is steady).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=None, help="one lr for all methods")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--max-train", type=int, default=0, help="cap training examples (0 = all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")

    splits = load_dataset("rotten-tomatoes", "seq-cls", seed=args.seed)
    if args.max_train:
        splits.train = splits.train.select(range(min(args.max_train, len(splits.train))))
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    load_at_start = os.getloadavg()[0]
    results = []
    for method in methods:  # results are written after every method, so a long run keeps what it has
        results.append(run_method(method, splits, tokenizer, args))
        print(json.dumps(results[-1]))
        config = run_config(argv, args, splits, load_at_start)
        write_results(Path(args.out), results, config)
    print(markdown(results, config))
    return 0


def run_config(argv, args, splits, load_at_start) -> dict:
    return {
        "command": "python benchmarks/centralized.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": DEFAULT_MODEL, "epochs": args.epochs, "batch_size": args.batch_size,
        "max_length": args.max_length, "seed": args.seed,
        "train_examples": len(splits.train), "test_examples": len(splits.test),
        "cpu_threads": torch.get_num_threads(), "machine": platform.machine(),
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_start": round(load_at_start, 2), "load_average_end": round(os.getloadavg()[0], 2),
    }


def write_results(out: Path, results: list[dict], config: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "centralized.json").write_text(json.dumps({"config": config, "results": results}, indent=2) + "\n")
    (out / "centralized.md").write_text(markdown(results, config))


if __name__ == "__main__":
    raise SystemExit(main())
