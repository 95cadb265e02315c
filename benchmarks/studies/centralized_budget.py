"""Federated vs centralized LoRA-XS at the same number of training examples seen.

    python -m benchmarks.studies.centralized_budget               # against the default run's report
    python -m benchmarks.studies.centralized_budget --report DIR/report.json --seeds 0 1 [--out DIR]

Reads a finished `flower-simulation` report (default: the default configuration's run in
benchmarks/studies/results/federation_sweep/), takes its run config and the examples its clients trained
(the sum of `examples_trained` over rounds), and trains one centralized LoRA-XS model with the
same model, rank, alpha, learning rates, batch size and token length on the union of every
simulated client's training split for exactly that many examples (one shuffled stream, no
Flower). Both are scored on the server's held-out set (`held_out_union`, the same seeded sample
the federated report's accuracy comes from) and on the whole union of the clients' test splits.
Writes <out>/centralized_budget.{json,md} (default benchmarks/studies/results/).
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from datasets import Dataset, concatenate_datasets

from benchmarks.result_files import (
    STUDY_RESULTS,
    command_line,
    footer,
    goal,
    goal_lines,
    machine_now,
    portable,
    write_result,
)
from shared.base_models import build_adapted_model, canonical_model_id, load_tokenizer
from shared.data.batches import EVAL_BATCH_SIZE, make_loader
from shared.federation.node_data import held_out_union, simulated_node_data
from shared.federation.run_config import FederationConfig
from shared.training import TrainConfig, evaluate, train

DEFAULT_REPORT = STUDY_RESULTS / "federation_sweep" / "fedavgm-s0.5-m0.5-head0.01" / "report.json"
GOAL_POINTS = 1.0


def federated_examples(report: dict) -> int:
    return sum(int(r.get("examples_trained") or 0) for r in report["rounds"])


def train_union(config: FederationConfig) -> Dataset:
    parts = [simulated_node_data(config, i).train.select_columns(["text", "label"]) for i in range(config.num_clients)]
    return concatenate_datasets(parts)


def run_centralized(config: FederationConfig, examples: int, seed: int) -> dict:
    """One centralized model trained for `examples` examples (config's lr and head-lr); its
    held-out accuracies."""
    model_id = canonical_model_id(config.model)
    tokenizer = load_tokenizer(model_id)
    held_out, labels = held_out_union(config, config.eval_max_examples)
    all_tests, _ = held_out_union(config, 10**9)
    train_set = train_union(config)
    model, _ = build_adapted_model(model_id, config.task, config.lora_config(), labels, seed=seed)
    steps = math.ceil(examples / config.batch_size)
    loader = make_loader(
        train_set, tokenizer, config.task, config.batch_size, config.max_length, shuffle=True, seed=seed
    )
    train_config = TrainConfig(max_steps=steps, lr=config.lr, head_lr=config.head_lr)
    torch.manual_seed(seed)
    result = train(model, loader, train_config, progress=True, desc=f"centralized lr {config.lr:g} seed {seed}")
    scores = {}
    for name, ds in (("held_out", held_out), ("all_client_tests", all_tests)):
        scores[name] = evaluate(
            model, make_loader(ds, tokenizer, config.task, EVAL_BATCH_SIZE, config.max_length), progress=True
        )
    return {
        "seed": seed,
        "lr": config.lr,
        "head_lr": config.head_lr,
        "examples": result.examples,
        "steps": result.steps,
        "train_seconds": round(result.seconds, 1),
        "train_examples_available": len(train_set),
        "accuracy_held_out": round(scores["held_out"].accuracy, 4),
        "held_out_examples": scores["held_out"].examples,
        "accuracy_all_client_tests": round(scores["all_client_tests"].accuracy, 4),
        "all_client_tests_examples": scores["all_client_tests"].examples,
    }


def markdown(document: dict) -> str:
    fed, runs = document["federated"], document["centralized"]
    lines = [
        "# Federated vs centralized LoRA-XS at the same examples seen",
        "",
        f"Federated run: `{document['report']}` (strategy {fed['strategy']}, {fed['rounds']} rounds, "
        f"{fed['examples']:,} examples trained in all). Centralized: the union of the clients' training splits, "
        "same model, rank, alpha, lr, head-lr, batch size and token length, the same number of examples.",
        "",
        "| run | examples trained | accuracy, server's held-out set | accuracy, all client test splits |",
        "|---|---:|---:|---:|",
        f"| federated (final round), lr {fed['lr']:g}, head-lr {fed['head_lr']:g} | {fed['examples']:,} | "
        f"{fed['accuracy_held_out']:.3f} | {fed['accuracy_all_client_tests']} |",
    ]
    for run in runs:
        lines.append(
            f"| centralized, lr {run['lr']:g}, head-lr {run['head_lr']:g}, seed {run['seed']} | {run['examples']:,} | {run['accuracy_held_out']:.3f} | "
            f"{run['accuracy_all_client_tests']:.3f} |"
        )
    lines += ["", *goal_lines(document["goals"]), "", footer(document)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", default=str(DEFAULT_REPORT), help="a flower-simulation report.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--lrs",
        type=float,
        nargs="+",
        default=None,
        help="centralized lr for R (default: the federation's, and a quarter of it); the best counts",
    )
    parser.add_argument("--out", type=Path, default=STUDY_RESULTS)
    args = parser.parse_args(argv)
    report_path = Path(args.report)
    if not report_path.is_file():
        print(f"error: no report at {report_path}; run flower-simulation first", file=sys.stderr)
        return 2
    report = json.loads(report_path.read_text())
    config = FederationConfig.from_run_config(report["config"])
    examples = federated_examples(report)
    machine = machine_now()
    started = time.perf_counter()
    lrs = args.lrs or [config.lr, config.lr / 4]
    runs = [run_centralized(config.with_overrides(lr=lr), examples, seed) for lr in lrs for seed in args.seeds]
    by_lr = {lr: sorted(r["accuracy_held_out"] for r in runs if r["lr"] == lr) for lr in lrs}
    medians = {lr: accs[len(accs) // 2] for lr, accs in by_lr.items()}  # over seeds (upper for an even count)
    best_lr = max(medians, key=medians.get)
    central = medians[best_lr]
    fed_acc = float(report["final"]["accuracy_global"])
    gap = (central - fed_acc) * 100
    document = {
        "command": command_line("benchmarks.studies.centralized_budget", argv),
        "machine": machine,
        "report": portable(str(report_path.resolve())),
        "federated": {
            "strategy": report["config"].get("strategy"),
            "rounds": len(report["rounds"]),
            "examples": examples,
            "accuracy_held_out": fed_acc,
            "lr": config.lr,
            "head_lr": config.head_lr,
            "accuracy_all_client_tests": "not measured by the run",
        },
        "centralized": runs,
        "seconds": round(time.perf_counter() - started, 1),
        "goals": [
            goal(
                f"federated default within {GOAL_POINTS:g} point of centralized LoRA-XS at the same examples",
                f"federated {fed_acc:.3f} vs the best centralized {central:.3f} (lr {best_lr:g}; "
                f"federated minus centralized {-gap:+.1f} points)",
                gap <= GOAL_POINTS,
                "the federated model sees each client's non-IID slice in small rounds; see docs/federation.md",
            )
        ],
    }
    write_result(args.out, "centralized_budget", document, markdown(document))
    print(markdown(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
