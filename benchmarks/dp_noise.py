"""Accuracy against the DP noise multiplier, federated LoRA-XS vs PEFT LoRA r=8 under the same
clipping: few trainable parameters should suffer less noise.

Both methods federate in one process with the same sampled clients, data and local training
(benchmarks/federated_loop.py); the server step is Flower's DP-FedAvg with server-side fixed
clipping, computed with Flower's own functions (`compute_clip_model_update`, `compute_stdv`,
`add_gaussian_noise_inplace`): each client's delta (all trainable tensors, head included) is
clipped to L2 norm C, the deltas are averaged with equal weights, and Gaussian noise of standard
deviation z C / n is added to every coordinate of the mean. The noise's L2 norm grows with the
square root of the number of trained parameters (the table gives both counts), while the clipped
signal does not.

    python -m benchmarks.dp_noise [--noise 0 0.5 1 2] [--rounds 3] [--clip 2.0] [--methods loraxs lora]
Writes benchmarks/results/dp_noise.{json,md}.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, compute_clip_model_update, compute_stdv

from benchmarks.result_files import goal, goal_lines
from benchmarks.federated_loop import held_out_loader, run_federated, sampled_partitions
from benchmarks.federated_methods import build
from benchmarks.simulation_runs import RESULTS
from shared.base_models import DEFAULT_MODEL, load_tokenizer
from shared.federation.run_config import FederationConfig

RANKS = {"loraxs": 16, "lora": 8}


def dp_fedavg(global_state: dict, states: list[dict], clip: float, noise: float, rng_seed: int) -> dict:
    """Flower's server-side fixed clipping + Gaussian noise on the uniform mean."""
    names = list(global_state)
    start = [global_state[n].double().numpy() for n in names]
    clipped = []
    for state in states:
        arrays = [state[n].double().numpy() for n in names]
        compute_clip_model_update(arrays, start, clip)  # arrays <- start + clip(arrays - start)
        clipped.append(arrays)
    mean = [np.mean([c[i] for c in clipped], axis=0) for i in range(len(names))]
    if noise > 0:
        np.random.seed(rng_seed)  # Flower's add_gaussian_noise_inplace draws from numpy's global RNG
        add_gaussian_noise_inplace(mean, compute_stdv(noise, clip, len(states)))
    return {n: torch.from_numpy(np.asarray(m)).float() for n, m in zip(names, mean)}


def run(method: str, noise: float, config: FederationConfig, clip: float, tokenizer, eval_loader) -> dict:
    labels = config.label_names() or ["fresh", "rotten"]
    federated = build(method, RANKS[method], labels, seed=config.seed)
    began = time.perf_counter()
    result = run_federated(
        federated, config, config.train_config(), tokenizer, eval_loader,
        aggregate=lambda start, states, weights, r: dp_fedavg(start, states, clip, noise, config.seed * 1000 + r),
    )
    return {"accuracy": result.accuracy, "trainable_parameters": federated.trainable_parameters(),
            "seconds": round(time.perf_counter() - began, 1)}


def noise_goals(results: dict, noises: list[float]) -> list[dict]:
    """Few parameters suffer less noise: at each z > 0, LoRA-XS loses fewer points (from its own
    z = 0 accuracy) than PEFT LoRA r=8 loses from its own."""
    if 0.0 not in noises:
        return []
    lost = {m: {z: (results[f"{m}-z0"]["accuracy"] - results[f"{m}-z{z:g}"]["accuracy"]) * 100
                for z in noises if z > 0} for m in ("loraxs", "lora")}
    measured = "; ".join(f"z={z:g}: LoRA-XS {-lost['loraxs'][z]:+.1f}, LoRA {-lost['lora'][z]:+.1f} points"
                         for z in lost["loraxs"])
    return [goal("LoRA-XS loses less accuracy to DP noise than PEFT LoRA r=8 at every z > 0 (same clipping)",
                 measured, all(lost["loraxs"][z] <= lost["lora"][z] for z in lost["loraxs"]),
                 "at that z the clipped signal of both is buried, or LoRA's z = 0 start is lower")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clip", type=float, default=2.0)
    parser.add_argument("--methods", nargs="+", default=["loraxs", "lora"], choices=sorted(RANKS))
    parser.add_argument("--eval-examples", type=int, default=300)
    args = parser.parse_args(argv)
    config = FederationConfig(num_server_rounds=args.rounds)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    eval_loader = held_out_loader(config, tokenizer, args.eval_examples)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "rounds": args.rounds, "clip": args.clip,
            "clients_per_round": len(sampled_partitions(config, 1)), "load_before": round(os.getloadavg()[0], 2),
            "command": "python -m benchmarks.dp_noise " + " ".join(argv if argv is not None else sys.argv[1:])}
    results = {}
    for method in args.methods:
        for z in args.noise:
            key = f"{method}-z{z:g}"
            print(key, flush=True)
            results[key] = {"method": method, "noise_multiplier": z, **run(method, z, config, args.clip, tokenizer, eval_loader)}
            print(f"  -> {results[key]}", flush=True)
            (RESULTS / "dp_noise.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    meta["load_after"] = round(os.getloadavg()[0], 2)
    goals = noise_goals(results, args.noise) if {"loraxs", "lora"} <= set(args.methods) else []
    (RESULTS / "dp_noise.json").write_text(json.dumps({"meta": meta, "command": meta["command"], "results": results,
                                                       "goals": goals}, indent=2))
    lines = [f"# DP-FedAvg (server-side fixed clipping, C = {args.clip}) vs noise multiplier ({meta['date']}, "
             f"{args.rounds} rounds of {meta['clients_per_round']} clients, {args.eval_examples} held-out reviews)", "",
             "| noise multiplier z | " + " | ".join(f"{m} (r={RANKS[m]})" for m in args.methods) + " |",
             "|---|" + "---|" * len(args.methods)]
    for z in args.noise:
        cells = [f"{results[f'{m}-z{z:g}']['accuracy']:.3f}" for m in args.methods]
        lines.append(f"| {z:g} | " + " | ".join(cells) + " |")
    params = ", ".join(f"{m}: {results[f'{m}-z{args.noise[0]:g}']['trainable_parameters']:,}" for m in args.methods)
    lines += ["", *goal_lines(goals)]
    lines += ["", f"Trainable parameters (what the noise is spread over): {params}.",
              f"Command: `{meta['command']}`; load average before {meta['load_before']}, after {meta['load_after']}."]
    (RESULTS / "dp_noise.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "dp_noise.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
