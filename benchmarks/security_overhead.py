"""What the security flags cost: one federation per mode, side by side, same seed and data.

Modes: plain, --encrypt (updates sealed with HPKE to the ServerApp's key), --secure-aggregation
(SecAgg+ on the Message API: keys, shares, masked delta, unmask; server/secure_rounds.py), and both.
Each run: the real ServerApp and ClientApp code on the in-process Grid (simulations/in_process.py,
messages round-tripped through Flower's protobuf serde, bytes counted by server/traffic.py as in
every report), the packaged MiniLM (rank 16) unless --model, a synthetic review folder cut into
--clients iid partitions. Also what authenticating secure aggregation costs (the server's
signatures, the sealed stage replies, the share commitments; benchmarks/secagg_signing.py), per
round, for --clients and larger groups. Writes <out>/security_overhead.json and .md
(benchmarks/result_files.py).

    python -m benchmarks.security_overhead [--clients 5] [--rounds 3] [--examples 200] [--model ID|DIR]
                                           [--modes plain encrypt secure-aggregation both] [--out DIR]
"""

import argparse
import json
import os
import platform
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.result_files import RESULTS, command_line, footer, machine_now, write_result
from benchmarks.secagg_signing import signing_cost
from client.app import make_client_app
from server.federation import run_federation
from shared.base_models import DEFAULT_MODEL
from shared.federation.run_config import FederationConfig
from simulations.in_process import InProcessGrid

SIGNING_GROUPS = (10, 25)  # group sizes measured for the signing cost besides --clients
WORDS = {
    0: ["bad", "awful", "boring", "dull", "weak", "clumsy"],
    1: ["great", "superb", "fun", "moving", "fresh", "sharp"],
}
MODES = {
    "plain": {},
    "encrypt": {"encrypt_updates": True},
    "secure-aggregation": {"secure_aggregation": True},
    "both": {"encrypt_updates": True, "secure_aggregation": True},
}


def write_reviews(folder: Path, count: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with open(folder / "reviews.jsonl", "w") as out:
        for i in range(count):
            y = i % 2
            text = " ".join(rng.choice(WORDS[y] + WORDS[1 - y][:2]) for _ in range(8)) + " film"
            out.write(json.dumps({"text": text, "label": ["neg", "pos"][y]}) + "\n")
    return folder


def run_mode(config: FederationConfig) -> dict:
    grid = InProcessGrid(make_client_app(config), config.num_clients)
    started = time.perf_counter()
    report = run_federation(grid, config)
    seconds = time.perf_counter() - started
    final = report["final"]
    return {
        "bytes_up_per_client_per_round": final["bytes_up_per_client_per_round"],
        "bytes_down_per_client_per_round": final["bytes_down_per_client_per_round"],
        "adapter_payload_bytes": final["adapter_payload_bytes"],
        "seconds_per_round": round(seconds / config.num_server_rounds, 2),
        "final_accuracy_global": final.get("accuracy_global"),
        "rejected_updates": sum(r.get("rejected_updates", 0) for r in report["rounds"]),
        "max_quantization_error": max(
            (
                r["secure_aggregation"]["max_quantization_error"] or 0
                for r in report["rounds"]
                if "secure_aggregation" in r
            ),
            default=None,
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.security_overhead")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the result files")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    machine = machine_now()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_reviews(Path(tmp) / "reviews", args.examples)
        base = FederationConfig(
            num_clients=args.clients,
            num_server_rounds=args.rounds,
            fraction_train=1.0,
            fraction_evaluate=0.0,
            final_eval_fraction=0.0,
            model=args.model,
            dataset=str(data),
            partition="iid",
            eval_max_examples=100,
            seed=0,
        )
        for mode in ["plain"] + [m for m in args.modes if m != "plain"]:
            results[mode] = run_mode(replace(base, out_dir=str(Path(tmp) / mode), **MODES[mode]))
            print(mode, results[mode], flush=True)
    values = results["plain"]["adapter_payload_bytes"] // 4  # fp32: the values secure aggregation sums
    signing = [signing_cost(n, values) for n in sorted({max(3, args.clients), *SIGNING_GROUPS})]
    plain = results["plain"]
    for row in results.values():
        row["bytes_up_vs_plain"] = round(
            row["bytes_up_per_client_per_round"] / plain["bytes_up_per_client_per_round"], 4
        )
        row["bytes_down_vs_plain"] = round(
            row["bytes_down_per_client_per_round"] / plain["bytes_down_per_client_per_round"], 4
        )
    document = {
        "command": command_line("benchmarks.security_overhead", argv),
        "machine": machine,
        "setup": {
            "model": args.model,
            "clients": args.clients,
            "rounds": args.rounds,
            "examples": args.examples,
            "seed": 0,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        },
        "modes": results,
        "signing": signing,
    }
    lines = [
        "# Security overhead (same seed, same data, side by side)",
        "",
        f"{args.model}, {args.clients} clients, {args.rounds} rounds, {document['setup']['machine']}.",
        "",
        "| mode | bytes up / client / round | vs plain | bytes down / client / round | vs plain | s / round | final accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, row in results.items():
        acc = row["final_accuracy_global"]
        lines.append(
            f"| {mode} | {row['bytes_up_per_client_per_round']:,.0f} | {row['bytes_up_vs_plain']:.3f}x | "
            f"{row['bytes_down_per_client_per_round']:,.0f} | {row['bytes_down_vs_plain']:.3f}x | "
            f"{row['seconds_per_round']:.2f} | {'-' if acc is None else f'{acc:.4f}'} |"
        )
    lines += [
        "",
        "Bytes are Flower's serialized message objects of the train phase (server/traffic.py); down "
        "excludes the factor bundle (sent once per node; with --encrypt it carries the 32-byte key too). A sealed "
        "update is one bytes value, a plain one three Array objects, each with its own 64-byte id and np.save "
        "header, and its float bytes deflate a little, ciphertext does not: the two effects net out near 1x. "
        "Seconds per round were measured on a machine shared with other jobs: compare bytes, not seconds. "
        "Secure aggregation: up and down include its three stage messages per client and round (keys ride "
        "in the train reply; the masked delta is uint32, 4 B per value like fp32, plus one weight); the final "
        "accuracy differs from plain by at most the quantization bound per value (max_quantization_error in "
        "the JSON). 'both' costs exactly what secure aggregation alone costs: secure aggregation always sends "
        "the server's keys and seals every stage reply, the masked delta included.",
        "",
    ]
    lines += [
        "## Authenticating secure aggregation",
        "",
        "Server signatures (Ed25519) on its 4 messages, each of a client's 4 stage replies sealed (HPKE), "
        "commitments to shares; measured on one in-process round per group size (benchmarks/secagg_signing.py), "
        f"d = {values:,} values. Seconds are the sum over the server and all clients of one round.",
        "",
        "| clients | bytes up / client / round (seal + commitments) | bytes down / client / round (signatures + commitments) "
        "| s / round: sign | verify | seal | open | commitments | total |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in signing:
        up, down, sec = (
            row["bytes_up_per_client_per_round"],
            row["bytes_down_per_client_per_round"],
            row["seconds_per_round"],
        )
        lines.append(
            f"| {row['clients']} | {up['total']:,.0f} ({up['seal']:,.0f} + {up['commitments']:,.0f}) | "
            f"{down['total']:,.0f} ({down['signature']:,.0f} + {down['commitments']:,.0f}) | {sec['sign']:.4f} | "
            f"{sec['verify']:.4f} | {sec['seal']:.4f} | {sec['open']:.4f} | {sec['commitments']:.4f} | {sec['total']:.4f} |"
        )
    lines += ["", footer(document), ""]
    write_result(args.out, "security_overhead", document, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
