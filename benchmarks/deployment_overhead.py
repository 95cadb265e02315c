"""Per-round client overhead in a deployment vs the local training itself.

In a Flower deployment every message runs in a fresh `flwr-clientapp` process, so each round a
client pays: process start, imports (torch, transformers, flwr, this project), loading the base
model and injecting LoRA-XS (with the factors from the on-disk cache, or a fresh SVD when the
cache misses), tokenizer + data; then it trains. This benchmark runs each of those in a fresh
process, as in deployment, for the real MiniLM (rank 16, default targets) on a data folder of
100 synthetic reviews (80 train / 20 test, as a node splits it). Then it runs a real loopback
deployment (SuperLink + 1 SuperNode on that folder, `flwr run`) for a few rounds and compares
the steady-state round time with the training time. Medians of a few repeats go to
    benchmarks/results/deployment_overhead.json and .md

    python -m benchmarks.deployment_overhead [--repeats 3] [--examples 100] [--rounds 3]

The numbers depend on the machine; the table says where it was measured.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LABELS = ["0", "1"]  # the synthetic folder's integer labels
BATCH_SIZE, MAX_LENGTH = 16, 64
RESULTS = REPO / "benchmarks" / "results"
PHASES = {
    "process_start_s": "process start (python interpreter)",
    "imports_s": "imports (torch, transformers, flwr, project)",
    "model_cache_hit_s": "model load + inject, factors from the cache",
    "model_fresh_svd_s": "model load + inject, fresh SVD of the weights",
    "data_s": "tokenizer + data loaders",
    "train_s": "local training (1 epoch)",
}


def child(mode: str, cache_dir: str, data_dir: str) -> None:
    """One client 'message' in a fresh process: prints its phase timestamps as JSON."""
    stamps = {"main": time.time()}
    import flwr.clientapp  # noqa: F401  (what the ClientApp process imports)

    from shared.artifacts.cache import find_cached_basis, store_basis
    from shared.base_models import build_adapted_model
    from shared.data.batches import make_loader
    from shared.data.local_folder import load_local_folder
    from shared.loraxs.config import LoraXSConfig
    from shared.base_models import DEFAULT_MODEL, load_tokenizer
    from shared.training import TrainConfig, train

    stamps["imports"] = time.time()
    config = LoraXSConfig(rank=16)
    fingerprint_file = Path(cache_dir) / "fingerprint"
    basis = None
    if mode == "cache":
        basis = find_cached_basis(fingerprint_file.read_text(), [Path(cache_dir)])
        assert basis is not None, "the cache should hit"
    model, basis = build_adapted_model(DEFAULT_MODEL, "seq-cls", config, labels=LABELS, basis=basis)
    if mode == "svd":
        store_basis(cache_dir, basis, DEFAULT_MODEL)
        fingerprint_file.write_text(basis.fingerprint)
    stamps["model"] = time.time()
    result = {"stamps": stamps}
    if mode == "cache":
        splits = load_local_folder(data_dir)
        loader = make_loader(splits.train, load_tokenizer(DEFAULT_MODEL), "seq-cls", BATCH_SIZE, MAX_LENGTH, shuffle=True)
        stamps["data"] = time.time()
        trained = train(model, loader, TrainConfig(epochs=1.0))
        stamps["train"] = time.time()
        result["train_steps"] = trained.steps
        result["train_examples"] = trained.examples
    print(json.dumps(result))


def write_synthetic_reviews(folder: Path, n: int) -> Path:
    """A data folder of deterministic review-like texts of 20-40 words (no download at run time)."""
    good = "wonderful moving clever funny superb gripping charming fresh".split()
    bad = "boring clumsy dull predictable tedious flat lifeless stale".split()
    filler = "the film story acting cast plot scenes director and with a of in its".split()
    texts, labels = [], []
    for i in range(n):
        mood = good if i % 2 else bad
        words = [filler[(i * 7 + j) % len(filler)] if j % 3 else mood[(i + j) % len(mood)] for j in range(20 + i % 21)]
        texts.append(" ".join(words))
        labels.append(i % 2)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "reviews.jsonl", "w") as out:
        out.writelines(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels))
    return folder


def run_child(mode: str, cache_dir: str, data_dir: str) -> dict[str, float]:
    spawned = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.deployment_overhead", "--child", mode, "--cache-dir", cache_dir,
         "--data-dir", data_dir],
        cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600,
    )
    if done.returncode != 0:
        raise SystemExit(f"benchmark child ({mode}) failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    stamps = result["stamps"]
    times = {
        "process_start_s": stamps["main"] - spawned,
        "imports_s": stamps["imports"] - stamps["main"],
        "model_cache_hit_s" if mode == "cache" else "model_fresh_svd_s": stamps["model"] - stamps["imports"],
    }
    if mode == "cache":
        times["data_s"] = stamps["data"] - stamps["model"]
        times["train_s"] = stamps["train"] - stamps["data"]
        times["train_steps"] = result["train_steps"]
        times["train_examples"] = result["train_examples"]
    return times


def deployment_rounds(data_dir: Path, workdir: Path, rounds: int) -> list[float]:
    """Seconds per round of a real loopback deployment: SuperLink + 1 SuperNode on `data_dir`."""
    from deployment.supernode import quoted_config_value
    from deployment.local import DeploymentConfig, LocalDeployment

    out_dir = workdir / "server-out"
    run_config = " ".join([
        f"num-clients=1 num-server-rounds={rounds} fraction-train=1.0 final-eval-fraction=0.0",
        f"dataset='' labels={quoted_config_value(','.join(LABELS))} rank=16 personalize='none'",
        f"local-epochs=1.0 batch-size={BATCH_SIZE} max-length={MAX_LENGTH}",
        f"out-dir={quoted_config_value(str(out_dir))}",
    ])
    with LocalDeployment(DeploymentConfig(data_dirs=(data_dir,), workdir=workdir / "deployment")) as deployment:
        deployment.wait_for_supernodes(timeout=120)
        done = deployment.run(REPO, run_config, timeout=600)
    report_path = out_dir / "report.json"
    if done.returncode != 0 or not report_path.is_file():
        raise SystemExit(f"the deployment run failed; see {workdir / 'deployment' / 'flwr-run.log'}")
    return [r["seconds"] for r in json.loads(report_path.read_text())["rounds"]]


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def markdown(summary: dict, meta: dict) -> str:
    m = {k: v["median"] for k, v in summary.items()}
    overhead = m["process_start_s"] + m["imports_s"] + m["model_cache_hit_s"] + m["data_s"]
    lines = [
        "# Per-round client overhead in deployment (fresh process per message)",
        "",
        f"Measured {meta['date']} on {meta['machine']} ({meta['cpus']} CPUs, torch threads {meta['torch_threads']}), "
        f"{meta['model']}, rank 16, {meta['train_examples']} training examples (batch {BATCH_SIZE}, max length "
        f"{MAX_LENGTH}, {meta['train_steps']} steps); medians of {meta['repeats']} runs. "
        "Command: `python -m benchmarks.deployment_overhead`.",
        "",
        "| phase (one fresh process, as for each Flower message) | median (s) | min (s) | max (s) |",
        "|---|---:|---:|---:|",
    ]
    for key, label in PHASES.items():
        s = summary[key]
        lines.append(f"| {label} | {s['median']:.2f} | {s['min']:.2f} | {s['max']:.2f} |")
    lines.append(f"| **client overhead per round** (start + imports + cache-hit load + data) | **{overhead:.2f}** | | |")
    if "deployment_round_s" in summary:
        s = summary["deployment_round_s"]
        lines.append(f"| real deployment: one round, rounds 2..{meta['rounds']} (1 SuperNode, same data) | "
                     f"{s['median']:.2f} | {s['min']:.2f} | {s['max']:.2f} |")
        lines.append(f"| real deployment: first round (factors shipped, app installed) | "
                     f"{meta['first_round_s']:.2f} | | |")
    lines += [
        "",
        f"Client overhead / training time: {overhead / m['train_s']:.2f}x. A factor-cache miss (fresh "
        f"SVD) costs {m['model_fresh_svd_s'] - m['model_cache_hit_s']:.2f} s more per round than a hit. "
        "The model-load rows include importing transformers' model classes on first use.",
    ]
    if "deployment_round_s" in summary:
        flower = summary["deployment_round_s"]["median"] - overhead - m["train_s"]
        lines.append(
            f"In the real deployment a steady-state round takes {summary['deployment_round_s']['median']:.2f} s: "
            f"training {m['train_s']:.2f} s, client overhead {overhead:.2f} s, and {flower:.2f} s left for "
            "Flower (starting flwr-clientapp, pulling/pushing messages) and the server."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deployment_overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per measurement")
    parser.add_argument("--examples", type=int, default=100, help="synthetic reviews in the data folder (80%% train)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the real deployment (0 = skip it)")
    parser.add_argument("--child", choices=("svd", "cache"), help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    if args.child:
        child(args.child, args.cache_dir, args.data_dir)
        return 0

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="loraxs-overhead-") as tmp:
        data_dir = write_synthetic_reviews(Path(tmp) / "device", args.examples)
        cache_dir = str(Path(tmp) / "cache")
        Path(cache_dir).mkdir()
        svd_runs = [run_child("svd", cache_dir, str(data_dir)) for _ in range(args.repeats)]
        cache_runs = [run_child("cache", cache_dir, str(data_dir)) for _ in range(args.repeats)]
        runs = svd_runs + cache_runs
        summary = {key: summarize([run[key] for run in runs if key in run]) for key in PHASES}
        round_seconds = deployment_rounds(data_dir, Path(tmp), args.rounds) if args.rounds else []
    if len(round_seconds) > 1:
        summary["deployment_round_s"] = summarize(round_seconds[1:])
    import torch

    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "train_examples": cache_runs[0]["train_examples"],
        "train_steps": cache_runs[0]["train_steps"],
        "repeats": args.repeats,
        "rounds": args.rounds,
        "first_round_s": round_seconds[0] if round_seconds else None,
        "wall_s": round(time.time() - started, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "deployment_overhead.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "runs": {"svd": svd_runs, "cache": cache_runs},
         "deployment_round_seconds": round_seconds}, indent=2) + "\n")
    table = markdown(summary, meta)
    (RESULTS / "deployment_overhead.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
