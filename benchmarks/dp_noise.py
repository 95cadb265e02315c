"""Accuracy against the DP noise multiplier, federated LoRA-XS vs PEFT LoRA r=8 under the same
clipping rule: few trainable parameters should suffer less noise.

Both methods federate in one process with the same sampled clients, data and local training
(benchmarks/federated_loop.py); the server step is Flower's DP-FedAvg with server-side fixed
clipping, computed with Flower's own functions (`compute_clip_model_update`, `compute_stdv`,
`add_gaussian_noise_inplace`): each client's delta (all trainable tensors, head included) is
clipped to L2 norm C, the deltas are averaged with equal weights, and Gaussian noise of standard
deviation z C / N is added to every coordinate of the mean.

- C, the same rule for both methods: the median L2 norm of the method's own round-1 client
  deltas, measured in its z = 0 run (the non-private baseline: equal-weight mean, no clipping, no
  noise). A fixed C shared by both would clip one method's updates far harder than the other's
  (LoRA r=8's deltas are several times longer), which measures clipping, not noise. `--clip C`
  sets one fixed C for both instead (and clips the z = 0 run too).
- N (`--noise-clients`, default 100 = every client of the federation): the noise of a round that
  N clients share. With the 10 clients a round trains here, z C / 10 per coordinate buries any
  signal at z >= 0.5 for both methods alike; DP is used with rounds of hundreds or thousands of
  clients, where the noise per coordinate is that much smaller. The 10 trained clients stand in
  for the N (their mean update is what N clients' would be, less sampling noise).
The noise's expected L2 norm is z C sqrt(d) / N for d trained parameters while the clipped mean's
is at most C: the table gives that ratio, z sqrt(d) / N, for each method.

    python -m benchmarks.dp_noise [--noise 0 0.5 1 2] [--rounds 3] [--noise-clients 100] [--clip C] [--methods loraxs lora] [--out DIR]
Writes <out>/dp_noise.{json,md} (default benchmarks/results/).
"""

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, compute_clip_model_update, compute_stdv

from benchmarks.federated_loop import held_out_loader, run_federated, sampled_partitions
from benchmarks.federated_methods import build
from benchmarks.result_files import RESULTS, command_line, footer, goal, goal_lines, machine_now, write_result
from shared.base_models import DEFAULT_MODEL, load_tokenizer
from shared.federation.run_config import FederationConfig
from shared.training import TrainConfig

RANKS = {"loraxs": 16, "lora": 8}
# PEFT LoRA's adapter lr: the best of `benchmarks.pareto`'s sweep at r=8 (0.002, 0.005, 0.01); at
# LoRA-XS's lr (0.02) LoRA r=8 stays at the majority class. LoRA-XS trains at the federation's lr.
LORA_LR = 2e-3


def update_norms(global_state: dict, states: list[dict]) -> list[float]:
    """L2 norm of each client's delta over every trained tensor."""
    return [
        math.sqrt(sum(float(((s[n].double() - g.double()) ** 2).sum()) for n, g in global_state.items()))
        for s in states
    ]


def dp_fedavg(
    global_state: dict, states: list[dict], clip: float | None, noise: float, noise_clients: int, rng_seed: int
) -> dict:
    """Flower's server-side fixed clipping + Gaussian noise of std z C / `noise_clients` on the
    uniform mean (clip None: no clipping, no noise)."""
    names = list(global_state)
    start = [global_state[n].double().numpy() for n in names]
    clipped = []
    for state in states:
        arrays = [state[n].double().numpy() for n in names]
        if clip is not None:
            compute_clip_model_update(arrays, start, clip)  # arrays <- start + clip(arrays - start)
        clipped.append(arrays)
    mean = [np.mean([c[i] for c in clipped], axis=0) for i in range(len(names))]
    if noise > 0 and clip is not None:
        np.random.seed(rng_seed)  # Flower's add_gaussian_noise_inplace draws from numpy's global RNG
        add_gaussian_noise_inplace(mean, compute_stdv(noise, clip, noise_clients))
    return {n: torch.from_numpy(np.asarray(m)).float() for n, m in zip(names, mean)}


def run(
    method: str, noise: float, config: FederationConfig, clip: float | None, noise_clients: int, tokenizer, eval_loader
) -> dict:
    labels = config.label_names() or ["fresh", "rotten"]
    federated = build(method, RANKS[method], labels, seed=config.seed)
    base = config.train_config()
    train_config = TrainConfig(epochs=base.epochs, lr=LORA_LR if method == "lora" else base.lr, head_lr=base.head_lr)
    norms: dict[int, list[float]] = {}

    def aggregate(start, states, weights, server_round):
        norms[server_round] = update_norms(start, states)
        return dp_fedavg(start, states, clip, noise, noise_clients, config.seed * 1000 + server_round)

    began = time.perf_counter()
    result = run_federated(federated, config, train_config, tokenizer, eval_loader, aggregate=aggregate)
    d = federated.trainable_parameters()
    return {
        "accuracy": result.accuracy,
        "trainable_parameters": d,
        "lr": train_config.lr,
        "clip": clip,
        "median_update_norm": {r: float(np.median(v)) for r, v in norms.items()},
        "noise_to_signal": noise * math.sqrt(d) / noise_clients,
        "seconds": round(time.perf_counter() - began, 1),
    }


def noise_goals(results: dict, noises: list[float], rule: str) -> list[dict]:
    """Few parameters suffer less noise: at each z > 0, LoRA-XS loses fewer points (from its own
    z = 0 accuracy) than PEFT LoRA r=8 loses from its own."""
    if 0.0 not in noises:
        return []
    lost = {
        m: {z: (results[f"{m}-z0"]["accuracy"] - results[f"{m}-z{z:g}"]["accuracy"]) * 100 for z in noises if z > 0}
        for m in ("loraxs", "lora")
    }
    measured = "; ".join(
        f"z={z:g}: LoRA-XS {-lost['loraxs'][z]:+.1f}, LoRA {-lost['lora'][z]:+.1f} points" for z in lost["loraxs"]
    )
    return [
        goal(
            f"LoRA-XS loses less accuracy to DP noise than PEFT LoRA r=8 at every z > 0 ({rule})",
            measured,
            all(lost["loraxs"][z] <= lost["lora"][z] for z in lost["loraxs"]),
            "at that z the clipped signal of both is buried, or LoRA's z = 0 start is lower",
        )
    ]


def method_clip(results: dict, method: str, fixed: float | None) -> float:
    """`fixed`, else the median norm of the method's round-1 deltas in its z = 0 run."""
    return fixed if fixed is not None else results[f"{method}-z0"]["median_update_norm"][1]


def markdown(meta: dict, results: dict, goals: list[dict], noises: list[float], methods: list[str]) -> str:
    rule = (
        f"fixed C = {meta['clip']:g} for both"
        if meta["clip"] is not None
        else "C = the method's median round-1 update norm at z = 0; z = 0 unclipped"
    )
    lines = [
        f"# DP-FedAvg (server-side fixed clipping) vs noise multiplier ({meta['rounds']} rounds "
        f"of {meta['clients_per_round']} clients, noise of a {meta['noise_clients']}-client round, "
        f"{meta['eval_examples']} held-out reviews)",
        "",
        f"Clipping: {rule}.",
        "",
        "| noise multiplier z | " + " | ".join(f"{m} (r={RANKS[m]}) accuracy | noise / C" for m in methods) + " |",
        "|---|" + "---:|---:|" * len(methods),
    ]
    for z in noises:
        cells = []
        for m in methods:
            row = results.get(f"{m}-z{z:g}")
            cells += [f"{row['accuracy']:.3f}", f"{row['noise_to_signal']:.2f}"] if row else ["—", "—"]
        lines.append(f"| {z:g} | " + " | ".join(cells) + " |")
    details = []
    for m in methods:
        runs = [r for k, r in results.items() if r["method"] == m]
        if runs:
            clips = sorted({r["clip"] for r in runs if r["clip"] is not None})
            details.append(
                f"{m}: {runs[0]['trainable_parameters']:,} trained parameters, lr {runs[0]['lr']:g}, "
                f"C {', '.join(f'{c:.2f}' for c in clips) or 'none'}"
            )
    lines += [
        "",
        *goal_lines(goals),
        "",
        "noise / C: the noise's expected L2 norm over the clipped mean's largest, z sqrt(d) / N.",
        f"Per method: {'; '.join(details)}.",
        "",
        footer(meta),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--clip",
        type=float,
        default=None,
        help="one fixed clipping norm for both methods (default: each its median update norm)",
    )
    parser.add_argument(
        "--noise-clients",
        type=int,
        default=100,
        help="N in the noise's standard deviation z C / N: the clients sharing a round",
    )
    parser.add_argument("--methods", nargs="+", default=["loraxs", "lora"], choices=sorted(RANKS))
    parser.add_argument("--eval-examples", type=int, default=300)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    if args.clip is None and 0.0 not in args.noise:
        parser.error("without --clip the z = 0 run measures each method's clipping norm: include 0 in --noise")
    if args.noise_clients < 1 or (args.clip is not None and not args.clip > 0):
        parser.error("--noise-clients must be >= 1 and --clip > 0")
    config = FederationConfig(num_server_rounds=args.rounds)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    eval_loader = held_out_loader(config, tokenizer, args.eval_examples)
    noises = sorted(args.noise)  # z = 0 first: it measures the clipping norm
    meta = {
        "command": command_line("benchmarks.dp_noise", argv),
        "machine": machine_now(),
        "rounds": args.rounds,
        "clip": args.clip,
        "noise_clients": args.noise_clients,
        "eval_examples": args.eval_examples,
        "clients_per_round": len(sampled_partitions(config, 1)),
    }
    rule = "same clipping norm" if args.clip is not None else "each clipped at its own median update norm"
    results, goals = {}, []
    for method in args.methods:
        for z in noises:
            key = f"{method}-z{z:g}"
            clip = args.clip if (args.clip is not None or z == 0) else method_clip(results, method, None)
            print(key, f"C={clip}", flush=True)
            results[key] = {
                "method": method,
                "noise_multiplier": z,
                **run(method, z, config, clip, args.noise_clients, tokenizer, eval_loader),
            }
            print(f"  -> {results[key]}", flush=True)
            save(args.out, meta, results, goals, noises, args.methods)
    goals = noise_goals(results, noises, rule) if {"loraxs", "lora"} <= set(args.methods) else []
    print(save(args.out, meta, results, goals, noises, args.methods))
    return 0


def save(out: Path, meta: dict, results: dict, goals: list[dict], noises: list[float], methods: list[str]) -> str:
    """The results so far (rewritten after every run): JSON and markdown; the markdown."""
    text = markdown(meta, results, goals, noises, methods)
    write_result(out, "dp_noise", {**meta, "results": results, "goals": goals}, text)
    return text


if __name__ == "__main__":
    raise SystemExit(main())
