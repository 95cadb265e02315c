"""Per-round client overhead in a deployment vs the local training itself.

In a Flower deployment every message runs in a fresh `flwr-clientapp` process, so each round a
client pays: process start, imports (torch, transformers, flwr, this project), loading the base
model and injecting LoRA-XS (with the factors from the on-disk cache, or a fresh SVD when the
cache misses), tokenizer + data; then it trains. This benchmark runs each of those in a fresh
process, as in deployment, for the real MiniLM (rank 16, default targets) on a data folder of
100 synthetic reviews (80 train / 20 test, as a node splits it). Then it runs a real loopback
deployment (SuperLink + 1 SuperNode on that folder, `flwr run`) for a few rounds and compares
the steady-state round time with the training time. Medians of a few repeats go to
<out>/deployment_overhead.{json,md} (default benchmarks/studies/results/).

    python -m benchmarks.studies.deployment_overhead [--repeats 3] [--examples 100] [--rounds 3] [--compare-tree DIR] [--out DIR]

With --compare-tree DIR (another checkout, e.g. `git archive <old commit> | tar -x -C DIR`) the
same children and deployment run on both trees, interleaved, and the table has both columns.

The numbers depend on the machine; the table says where it was measured.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.synthetic_reviews import LABELS, write_synthetic_reviews  # json only: the child's imports stay its own

REPO = Path(__file__).resolve().parents[2]
BATCH_SIZE, MAX_LENGTH = 16, 64
UNNEEDED_MODULES = ("flwr_datasets", "seaborn", "matplotlib", "scipy", "onnx", "onnxruntime", "onnxscript", "peft")
PHASES = {
    "process_start_s": "process start (python interpreter)",
    "imports_s": "imports of the ClientApp module (torch, flwr, datasets, project)",
    "model_code_s": "import transformers' model code (BERT)",
    "model_cache_hit_s": "model load + inject, factors from the cache",
    "model_fresh_svd_s": "model load + inject, fresh SVD of the weights",
    "data_s": "tokenizer + data loaders",
    "train_s": "local training (1 epoch)",
}


def child(mode: str, cache_dir: str, data_dir: str) -> None:
    """One client 'message' in a fresh process: prints its phase timestamps as JSON.

    Imports are what `flwr-clientapp` imports for this project: flwr's client side and the
    ClientApp module `client.app` (with everything it imports at module level). The model phase
    is split into importing transformers' model code and building the adapted model (weights,
    factors from the cache, inject), as `client.worker_cache.cached_model` does per message."""
    stamps = {"main": time.time()}
    import flwr.clientapp  # noqa: F401

    import client.app
    import client.message_work  # noqa: F401  (what client.app imports when a train message arrives)
    from shared.artifacts.cache import find_cached_basis, store_basis
    from shared.base_models import DEFAULT_MODEL, build_adapted_model, load_tokenizer
    from shared.data.batches import make_loader
    from shared.data.local_folder import load_local_folder
    from shared.loraxs.config import LoraXSConfig
    from shared.training import TrainConfig, train

    stamps["imports"] = time.time()
    from transformers import AutoModel  # noqa: F401
    from transformers.models.bert import modeling_bert  # noqa: F401  (MiniLM is a BERT)

    stamps["model_code"] = time.time()
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
        loader = make_loader(
            splits.train, load_tokenizer(DEFAULT_MODEL), "seq-cls", BATCH_SIZE, MAX_LENGTH, shuffle=True
        )
        stamps["data"] = time.time()
        trained = train(model, loader, TrainConfig(epochs=1.0))
        stamps["train"] = time.time()
        result["train_steps"] = trained.steps
        result["train_examples"] = trained.examples
    print(json.dumps(result))


def heavy_modules_in(tree: Path) -> list[str]:
    """Modules that importing the ClientApp pulls in although a plain train message never
    needs them (plotting, partitioning, ONNX): the lazy-import cuts, checked in a fresh process."""
    code = (
        "import sys, client.app, client.message_work; print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & "
        f"{set(UNNEEDED_MODULES)!r})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(tree)},
    )
    if done.returncode != 0:
        raise SystemExit(f"importing client.app failed:\n{done.stderr[-2000:]}")
    return done.stdout.split()


def run_child(mode: str, cache_dir: str, data_dir: str, tree: Path = REPO) -> dict[str, float]:
    """The child in a fresh process, importing the project from `tree` (this checkout, or an
    older one to compare with: the same measuring code runs on both)."""
    spawned = time.time()
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            mode,
            "--cache-dir",
            cache_dir,
            "--data-dir",
            data_dir,
        ],
        # the project from `tree`; benchmarks.* (a namespace package) also from this checkout
        cwd=tree,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(tree), str(REPO)])},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise SystemExit(f"benchmark child ({mode}) failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    stamps = result["stamps"]
    times = {
        "process_start_s": stamps["main"] - spawned,
        "imports_s": stamps["imports"] - stamps["main"],
        "model_code_s": stamps["model_code"] - stamps["imports"],
        "model_cache_hit_s" if mode == "cache" else "model_fresh_svd_s": stamps["model"] - stamps["model_code"],
    }
    if mode == "cache":
        times["data_s"] = stamps["data"] - stamps["model"]
        times["train_s"] = stamps["train"] - stamps["data"]
        times["train_steps"] = result["train_steps"]
        times["train_examples"] = result["train_examples"]
    return times


def deployment_rounds(data_dir: Path, workdir: Path, rounds: int, app_dir: Path = REPO) -> list[float]:
    """Seconds per round of a real loopback deployment: SuperLink + 1 SuperNode on `data_dir`,
    the ServerApp and ClientApp built from `app_dir` (`flwr run app_dir`)."""
    from deployment.local import DeploymentConfig, LocalDeployment
    from deployment.supernode import quoted_config_value

    out_dir = workdir / "server-out"
    run_config = " ".join(
        [
            f"num-clients=1 num-server-rounds={rounds} fraction-train=1.0 final-eval-fraction=0.0",
            f"dataset='' labels={quoted_config_value(','.join(LABELS))} rank=16 personalize='none'",
            f"local-epochs=1.0 batch-size={BATCH_SIZE} max-length={MAX_LENGTH}",
            f"out-dir={quoted_config_value(str(out_dir))}",
        ]
    )
    with LocalDeployment(DeploymentConfig(data_dirs=(data_dir,), workdir=workdir / "deployment")) as deployment:
        deployment.wait_for_supernodes(timeout=120)
        done = deployment.run(app_dir, run_config, timeout=600)
    report_path = out_dir / "report.json"
    if done.returncode != 0 or not report_path.is_file():
        raise SystemExit(f"the deployment run failed; see {workdir / 'deployment' / 'flwr-run.log'}")
    return [r["seconds"] for r in json.loads(report_path.read_text())["rounds"]]


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def overhead_of(m: dict[str, float]) -> float:
    return m["process_start_s"] + m["imports_s"] + m["model_code_s"] + m["model_cache_hit_s"] + m["data_s"]


def markdown(summaries: dict[str, dict], meta: dict) -> str:
    """One column of medians per code tree ("now", and "before" with --compare-tree)."""
    labels = list(summaries)
    med = {label: {k: v["median"] for k, v in summaries[label].items()} for label in labels}
    lines = [
        "# Per-round client overhead in deployment (fresh process per message)",
        "",
        f"Torch threads {meta['torch_threads']}, "
        f"{meta['model']}, rank 16, {meta['train_examples']} training examples (batch {BATCH_SIZE}, max length "
        f"{MAX_LENGTH}, {meta['train_steps']} steps); medians of {meta['repeats']} runs"
        + (f", children of both trees interleaved; before = {meta['compare_tree']}" if len(labels) > 1 else "")
        + ".",
        "",
        "| phase (one fresh process, as for each Flower message) | "
        + " | ".join(f"{tree} median (s)" for tree in labels)
        + " | min (s) | max (s) |",
        "|---|" + "---:|" * (len(labels) + 2),
    ]
    now = summaries[labels[0]]
    for key, label in PHASES.items():
        cells = " | ".join(f"{med[tree][key]:.2f}" for tree in labels)
        lines.append(f"| {label} | {cells} | {now[key]['min']:.2f} | {now[key]['max']:.2f} |")
    cells = " | ".join(f"**{overhead_of(med[tree]):.2f}**" for tree in labels)
    lines.append(
        f"| **client overhead per round** (start + imports + model code + cache-hit load + data) | {cells} | | |"
    )
    if all("deployment_round_s" in med[tree] for tree in labels):
        cells = " | ".join(f"{med[tree]['deployment_round_s']:.2f}" for tree in labels)
        s = now["deployment_round_s"]
        lines.append(
            f"| real deployment: one round, rounds 2..{meta['rounds']} (1 SuperNode, same data) | "
            f"{cells} | {s['min']:.2f} | {s['max']:.2f} |"
        )
        cells = " | ".join(f"{meta['first_round_s'][tree]:.2f}" for tree in labels)
        lines.append(f"| real deployment: first round (factors shipped, app installed) | {cells} | | |")
    m = med[labels[0]]
    overhead = overhead_of(m)
    lines += [
        "",
        f"Now: client overhead / training time {overhead / m['train_s']:.2f}x. A factor-cache miss (fresh "
        f"SVD) costs {m['model_fresh_svd_s'] - m['model_cache_hit_s']:.2f} s more per round than a hit. "
        f"Building the adapted model once its code is imported (weights + factors + inject) takes "
        f"{m['model_cache_hit_s']:.2f} s: that is all a snapshot of the adapted model could save.",
        f"Modules importing `client.app` loads that a train message does not need: "
        f"{', '.join(meta['unneeded_modules'][labels[0]]) or 'none'}"
        + (f" (before: {', '.join(meta['unneeded_modules'][labels[1]]) or 'none'})" if len(labels) > 1 else "")
        + ".",
    ]
    if "deployment_round_s" in m:
        flower = m["deployment_round_s"] - overhead - m["train_s"]
        lines.append(
            f"In the real deployment a steady-state round takes {m['deployment_round_s']:.2f} s: "
            f"training {m['train_s']:.2f} s, client overhead {overhead:.2f} s, and {flower:.2f} s left for "
            "Flower (starting flwr-clientapp, installing the FAB, pulling/pushing messages) and the server."
        )
    if len(labels) > 1:
        before = med[labels[1]]
        lines.append(
            f"Client overhead {overhead_of(before):.2f} s before -> {overhead:.2f} s now "
            f"({overhead_of(before) - overhead:.2f} s less per message)."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per measurement")
    parser.add_argument("--examples", type=int, default=100, help="synthetic reviews in the data folder (80%% train)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the real deployment (0 = skip it)")
    parser.add_argument(
        "--compare-tree",
        metavar="DIR",
        help="another checkout of this project (e.g. `git archive` of an older commit) "
        "measured side by side, as the 'before' column",
    )
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/studies/results/)")
    parser.add_argument("--child", choices=("svd", "cache"), help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    if args.child:
        child(args.child, args.cache_dir, args.data_dir)
        return 0

    # imported here, not above: a --child process (this file, run as a script) measures its own imports
    from benchmarks.result_files import STUDY_RESULTS, command_line, footer, machine_now, portable, write_result

    machine = machine_now()
    # `timeout` ends us with SIGTERM: unwind, so LocalDeployment stops every process it started
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
    started = time.time()
    trees = {"now": REPO}
    if args.compare_tree:
        trees["before"] = Path(args.compare_tree).resolve()
        if not (trees["before"] / "client" / "app.py").is_file():
            raise SystemExit(f"--compare-tree {args.compare_tree} is not a checkout of this project")
    runs: dict[str, dict[str, list]] = {label: {"svd": [], "cache": []} for label in trees}
    round_seconds: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="loraxs-overhead-") as tmp:
        data_dir = write_synthetic_reviews(Path(tmp) / "device", args.examples)
        for mode in ("svd", "cache"):
            for _ in range(args.repeats):
                for label, tree in trees.items():  # interleaved: load drifts hit both alike
                    cache_dir = Path(tmp) / f"cache-{label}"
                    cache_dir.mkdir(exist_ok=True)
                    runs[label][mode].append(run_child(mode, str(cache_dir), str(data_dir), tree))
        for label, tree in trees.items():  # a fresh data folder each: the node keeps state in it
            device = write_synthetic_reviews(Path(tmp) / f"device-{label}", args.examples)
            round_seconds[label] = (
                deployment_rounds(device, Path(tmp) / label, args.rounds, tree) if args.rounds else []
            )
    summaries = {}
    for label in trees:
        every = runs[label]["svd"] + runs[label]["cache"]
        summaries[label] = {key: summarize([run[key] for run in every if key in run]) for key in PHASES}
        if len(round_seconds[label]) > 1:
            summaries[label]["deployment_round_s"] = summarize(round_seconds[label][1:])
    import torch

    meta = {
        "command": command_line("benchmarks.studies.deployment_overhead", argv),
        "machine": machine,
        "torch_threads": torch.get_num_threads(),
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "train_examples": runs["now"]["cache"][0]["train_examples"],
        "train_steps": runs["now"]["cache"][0]["train_steps"],
        "repeats": args.repeats,
        "rounds": args.rounds,
        "compare_tree": portable(str(trees["before"])) if "before" in trees else None,
        "unneeded_modules": {label: heavy_modules_in(tree) for label, tree in trees.items()},
        "first_round_s": {label: r[0] if r else None for label, r in round_seconds.items()},
        "wall_s": round(time.time() - started, 1),
    }
    table = markdown(summaries, meta) + "\n" + footer(meta) + "\n"
    write_result(
        args.out or STUDY_RESULTS,
        "deployment_overhead",
        {
            "command": meta["command"],
            "machine": machine,
            "meta": meta,
            "summary": summaries["now"],
            "summaries": summaries,
            "runs": runs,
            "deployment_round_seconds": round_seconds,
        },
        table,
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
