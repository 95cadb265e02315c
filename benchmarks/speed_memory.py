"""Speed and memory: training examples/s per method, simulation vs a bare loop, RSS, round time.

    python -m benchmarks.speed_memory            # 3 interleaved repeats; flower-simulation at 10, 20, 50 clients/round
    python -m benchmarks.speed_memory --quick    # 1 repeat; flower-simulation at 10 clients/round only

1. Training examples/s of LoRA-XS r=16, PEFT LoRA r=8 and full fine-tuning on the very same
   batches through `shared/training.py:train`; the methods take turns in every repeat
   (interleaved, so load on the machine hits all alike); medians.
2. `flower-simulation` (100 clients, natural split) with --fraction 0.1 / 0.2 / 0.5: seconds of
   each round (the report's), peak RSS of the driver process and of the driver with every
   process it started (Ray workers), sampled every 0.2 s with psutil.
3. A bare loop: the clients of one simulated round trained in this process through the same
   `train` on the same batches (same partitions, loader seeds), no Flower or Ray; simulation
   throughput = that round's examples / its seconds, against the bare loop's.
4. Peak RSS (ru_maxrss) of a fresh process that trains one client's round (LoRA-XS).
Writes benchmarks/results/speed_memory.json and .md.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import psutil
import torch

from benchmarks.federated_loop import sampled_partitions
from benchmarks.federated_methods import build
from benchmarks.result_files import RESULTS, command_line, goal, machine_now, write_result
from client.local_round import shuffle_seed
from shared.base_models import DEFAULT_MODEL, load_tokenizer
from shared.data.batches import make_loader
from shared.federation.node_data import simulated_node_data
from shared.federation.run_config import FederationConfig
from shared.training import TrainConfig, train

NAME = "speed_memory"
METHOD_LR = {"loraxs": 2e-2, "lora": 5e-3, "full": 5e-5}  # speed does not depend on it
SPEED_GOAL, SIMULATION_GOAL = 1.0, 0.85
POLL_SECONDS = 0.2


def same_batches(config: FederationConfig, tokenizer, count: int) -> list[dict]:
    """`count` training batches of the default federation's size, from clients 0, 1, ..."""
    batches, partition = [], 0
    while len(batches) < count:
        data = simulated_node_data(config, partition)
        batches += list(make_loader(data.train, tokenizer, config.task, config.batch_size, config.max_length))
        partition += 1
    return batches[:count]


def training_speed(config: FederationConfig, tokenizer, repeats: int, steps: int) -> dict:
    """method -> examples/s per repeat, on identical batches, methods interleaved."""
    labels = simulated_node_data(config, 0).labels
    models = {m: build(m, 16 if m == "loraxs" else 8, labels, seed=config.seed) for m in METHOD_LR}
    batches = same_batches(config, tokenizer, steps)
    speeds = {m: [] for m in models}
    for method, federated in models.items():  # warm-up: one untimed step each
        train(federated.model, batches[:1], TrainConfig(lr=METHOD_LR[method], max_steps=1))
    for repeat in range(repeats):
        order = list(models)[repeat % len(models) :] + list(models)[: repeat % len(models)]
        for method in order:
            result = train(models[method].model, batches, TrainConfig(lr=METHOD_LR[method], max_steps=len(batches)))
            speeds[method].append(round(result.examples_per_second, 2))
    return speeds


def bare_round(config: FederationConfig, tokenizer, server_round: int) -> dict:
    """The clients of `server_round` trained one after another in this process: examples, seconds."""
    federated = build("loraxs", config.rank, simulated_node_data(config, 0).labels, seed=config.seed)
    start_state = federated.state()
    examples, seconds = 0, 0.0
    for partition in sampled_partitions(config, server_round):
        data = simulated_node_data(config, partition)
        started = time.perf_counter()
        federated.load(start_state)
        seed = shuffle_seed(config, server_round, partition)
        loader = make_loader(
            data.train, tokenizer, config.task, config.batch_size, config.max_length, shuffle=True, seed=seed
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            result = train(federated.model, loader, config.train_config())
        federated.state()
        seconds += time.perf_counter() - started
        examples += result.examples
    return {
        "round": server_round,
        "examples": examples,
        "seconds": round(seconds, 2),
        "examples_per_second": round(examples / seconds, 2),
    }


def tree_rss(process: psutil.Process) -> tuple[int, int]:
    """(RSS of the process, RSS of it and all its descendants), bytes."""
    own = process.memory_info().rss
    total = own
    for child in process.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            continue
    return own, total


def simulate(config: FederationConfig, fraction: float, rounds: int, timeout: float) -> dict:
    """One flower-simulation run; its round seconds and the peak RSS of the driver (and tree)."""
    with tempfile.TemporaryDirectory() as out:
        command = [
            str(Path(sys.executable).parent / "flower-simulation"),
            "--num-clients",
            str(config.num_clients),
            "--rounds",
            str(rounds),
            "--fraction",
            str(fraction),
            "--final-eval-fraction",
            "0",
            "--eval-max-examples",
            "32",
            "--seed",
            str(config.seed),
            "--out",
            out,
            "--no-progress",
        ]
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        watched = psutil.Process(process.pid)
        driver_peak = tree_peak = 0
        while process.poll() is None:
            try:
                own, total = tree_rss(watched)
                driver_peak, tree_peak = max(driver_peak, own), max(tree_peak, total)
            except psutil.Error:
                pass
            if time.perf_counter() - started > timeout:
                process.terminate()  # flower-simulation ends its Ray on SIGTERM
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                raise RuntimeError(f"flower-simulation --fraction {fraction} ran past {timeout:.0f} s")
            time.sleep(POLL_SECONDS)
        output = process.stdout.read()
        if process.returncode != 0:
            raise RuntimeError(f"flower-simulation exited {process.returncode}: {output.strip().splitlines()[-1:]}")
        report = json.loads((Path(out) / "report.json").read_text())
    sampled = {
        r["round"]: sampled_partitions(replace(config, fraction_train=fraction), r["round"]) for r in report["rounds"]
    }
    rounds_out = [
        {
            "round": r["round"],
            "clients": r["clients_trained"],
            "seconds": r["seconds"],
            "examples": sum(len(simulated_node_data(config, p).train) for p in sampled[r["round"]]),
        }
        for r in report["rounds"]
    ]
    return {
        "fraction": fraction,
        "rounds": rounds_out,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "driver_peak_rss_mb": round(driver_peak / 2**20, 1),
        "tree_peak_rss_mb": round(tree_peak / 2**20, 1),
    }


def one_client_rss() -> float:
    """Peak RSS (MB) of a fresh process that builds LoRA-XS and trains one client's round."""
    code = (
        "import resource; from benchmarks.speed_memory import one_client_round; one_client_round(); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=900)
    return round(int(output.stdout.strip().splitlines()[-1]) / 1024, 1)  # ru_maxrss is in KiB on Linux


def one_client_round() -> None:
    config = FederationConfig()
    data = simulated_node_data(config, 0)
    federated = build("loraxs", config.rank, data.labels, seed=config.seed)
    loader = make_loader(
        data.train,
        load_tokenizer(DEFAULT_MODEL),
        config.task,
        config.batch_size,
        config.max_length,
        shuffle=True,
        seed=0,
    )
    train(federated.model, loader, config.train_config())


def goals(document: dict) -> list[dict]:
    speed = document["training_speed_median"]
    ratio = speed["loraxs"] / speed["lora"]
    found = [
        goal(
            f"LoRA-XS training examples/s >= {SPEED_GOAL:.1f}x PEFT LoRA r=8 (identical batches)",
            f"{ratio:.2f}x ({speed['loraxs']:.1f} vs {speed['lora']:.1f} ex/s)",
            ratio >= SPEED_GOAL,
            "both run the whole frozen MiniLM forward and backward through the activations; "
            "the adapters' own cost is a small share of it",
        )
    ]
    throughput = document.get("simulation_vs_bare")
    if throughput:
        found.append(
            goal(
                f"simulation throughput >= {SIMULATION_GOAL}x a bare training loop on the same batches",
                f"{throughput['ratio']:.2f}x ({throughput['simulation_examples_per_second']:.1f} vs "
                f"{throughput['bare_examples_per_second']:.1f} ex/s, round {throughput['round']})",
                throughput["ratio"] >= SIMULATION_GOAL,
                "per round: Ray scheduling, message serialization, the factor bundle on a node's first "
                "message, the server's update checks and held-out evaluation; on 2 shared cores the "
                "Ray workers also compete with the driver",
            )
        )
    return found


def markdown(document: dict) -> str:
    speed = document["training_speed"]
    medians = document["training_speed_median"]
    lines = [
        f"Training on {document['batches']} identical batches of 16, {document['repeats']} interleaved repeats "
        "(median examples/s):",
        "",
        "| method | median ex/s | repeats | vs PEFT LoRA r=8 |",
        "|---|---:|---|---:|",
    ]
    for method, values in speed.items():
        lines.append(
            f"| {method} | {medians[method]:.1f} | {', '.join(f'{v:.1f}' for v in values)} | "
            f"{medians[method] / medians['lora']:.2f}x |"
        )
    lines += [
        "",
        "`flower-simulation` (100 clients, natural split, no final evaluation, 32 held-out examples):",
        "",
        "| clients per round | round | seconds | examples | ex/s | driver peak RSS MB | driver + Ray peak RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in document["simulations"]:
        for r in run["rounds"]:
            lines.append(
                f"| {r['clients']} | {r['round']} | {r['seconds']:.1f} | {r['examples']} | "
                f"{r['examples'] / r['seconds']:.1f} | {run['driver_peak_rss_mb']:.0f} | {run['tree_peak_rss_mb']:.0f} |"
            )
    bare = document.get("simulation_vs_bare")
    if bare:
        lines += [
            "",
            f"Bare loop (same {bare['examples']} examples of round {bare['round']}, same batches, this process): "
            f"{bare['bare_examples_per_second']:.1f} ex/s; simulation {bare['simulation_examples_per_second']:.1f} ex/s: "
            f"**{bare['ratio']:.2f}x**.",
        ]
    lines += [
        "",
        f"Peak RSS of one client's round (fresh process, LoRA-XS r=16): {document['one_client_peak_rss_mb']:.0f} MB.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, one simulation at 10 clients per round")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 3; quick 1)")
    parser.add_argument("--batches", type=int, default=None, help="batches per timed pass (default 8; quick 4)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per flower-simulation run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    batches = args.batches or (4 if args.quick else 8)
    machine = machine_now()
    config = FederationConfig()
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    speed = training_speed(config, tokenizer, repeats, batches)
    print(json.dumps({"training_speed": speed}), flush=True)
    plans = [(0.1, 1)] if args.quick else [(0.1, 2), (0.2, 1), (0.5, 1)]
    simulations = []
    for fraction, rounds in plans:
        simulations.append(simulate(config, fraction, rounds, args.timeout))
        print(json.dumps(simulations[-1]), flush=True)
    steady = simulations[0]["rounds"][-1]  # the last round at 10 clients: no first-round start-up when there are 2
    bare = bare_round(replace(config, fraction_train=0.1), tokenizer, steady["round"])
    simulation_speed = steady["examples"] / steady["seconds"]
    document = {
        "command": command_line(f"benchmarks.{NAME}", argv),
        "machine": machine,
        "batches": batches,
        "repeats": repeats,
        "training_speed": speed,
        "training_speed_median": {m: statistics.median(v) for m, v in speed.items()},
        "simulations": simulations,
        "simulation_vs_bare": {
            "round": steady["round"],
            "examples": steady["examples"],
            "simulation_examples_per_second": round(simulation_speed, 2),
            "bare_examples_per_second": bare["examples_per_second"],
            "ratio": round(simulation_speed / bare["examples_per_second"], 3),
        },
        "one_client_peak_rss_mb": one_client_rss(),
        "this_process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    document["goals"] = goals(document)
    text = markdown(document)
    write_result(args.out, NAME, document, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
