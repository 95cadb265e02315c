"""Privacy and robustness of federated LoRA-XS, measured with the real `flower-simulation`.

Poisoning: a seeded 10 % / 20 % of the 100 clients upload global - 10 * delta every round
(`--malicious-fraction`, attack flip-scale) under FedAvg, FedMedian, FedTrimmedAvg (beta 0.2) and
norm bounding (Flower's server-side fixed clipping with zero noise), against the clean FedAvg run.
Goal: at most 2 points lost at 10 % with a robust aggregator.
DP: Flower's server-side fixed-clipping DP at noise multipliers 0.5, 1, 2 (clipping norm C), with
the epsilon of Flower's RDP accountant (no amplification claimed).

    python -m benchmarks.robustness [--quick] [--rounds 5] [--clip 2.0] [--local-epochs E] [--only CASE ...] [--out DIR]
Writes <out>/robustness.{json,md} (default benchmarks/results/); each run under <out>/robustness/<case>/.
`--quick`: the 10 % cases and one noise level. Every case is scored on the server's held-out set
only (final-eval-fraction 0: no per-client final evaluation); `--local-epochs E` sets the clients'
local epochs (the same for the clean run and every attack; the federation's default is 1).
"""

from benchmarks.result_files import RESULTS, goal
from benchmarks.simulation_cases import Study, case_parser, run_study

GOAL_POINTS = 2.0
ROBUST = {
    "fedavg": "strategy='fedavg'",
    "fedmedian": "strategy='fedmedian'",
    "fedtrimmedavg": "strategy='fedtrimmedavg' trimmed-beta=0.2",
    "norm-bound": "strategy='fedavg' dp='server-fixed' dp-noise-multiplier=0.0 dp-clipping-norm={clip}",
}
SCORED_ON_SERVER = "final-eval-fraction=0.0"


def cases(clip: float, quick: bool, local_epochs: float | None = None) -> dict[str, str]:
    common = SCORED_ON_SERVER + (f" local-epochs={local_epochs}" if local_epochs else "")
    out = {"clean-fedavg": "strategy='fedavg'"}
    for share in (10,) if quick else (10, 20):
        for name, overrides in ROBUST.items():
            out[f"poison{share}-{name}"] = f"{overrides.format(clip=clip)} malicious-fraction={share / 100}"
    for z in (1.0,) if quick else (0.5, 1.0, 2.0):
        out[f"dp-z{z:g}"] = f"strategy='fedavg' dp='server-fixed' dp-noise-multiplier={z} dp-clipping-norm={clip}"
    return {name: f"{overrides} {common}" for name, overrides in out.items()}


def poisoning_goals(results: dict) -> list[dict]:
    """At most GOAL_POINTS lost at 10 % poisoned with the best robust aggregator, vs clean FedAvg."""
    clean = results.get("clean-fedavg", {}).get("final_accuracy")
    robust = {
        name: results[f"poison10-{name}"]["final_accuracy"]
        for name in ROBUST
        if name != "fedavg" and "final_accuracy" in results.get(f"poison10-{name}", {})
    }
    if clean is None or not robust:
        return []
    best = max(robust, key=robust.get)
    lost = (clean - robust[best]) * 100
    return [
        goal(
            f"<= {GOAL_POINTS:g} points lost at 10 % poisoned clients with a robust aggregator",
            f"{best}: {robust[best]:.3f} vs clean {clean:.3f} ({-lost:+.1f} points)",
            lost <= GOAL_POINTS,
            "the robust rules also discard or clip honest updates in rounds of 10 clients",
        )
    ]


def rows(document: dict) -> list[str]:
    size, results = document["size"], document["results"]
    clean = results.get("clean-fedavg", {}).get("final_accuracy")
    lines = [
        f"{size['rounds']} rounds, 100 clients, 10 per round, clipping norm {size['clip']}"
        + (f", {size['local_epochs']:g} local epochs" if size.get("local_epochs") else "")
        + ".",
        "",
        "| case | run-config | final accuracy | vs clean | mean of last 3 | epsilon (delta) |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        if "error" in result:
            lines.append(f"| {name} | `{document['cases'][name]}` | failed: {result['error']} | | | |")
            continue
        delta = f"{result['final_accuracy'] - clean:+.3f}" if clean is not None else ""
        privacy = result.get("privacy") or {}
        eps = f"{privacy['epsilon']:.1f} ({privacy['delta']:g})" if privacy.get("epsilon") is not None else ""
        lines.append(
            f"| {name} | `{document['cases'][name]}` | {result['final_accuracy']:.3f} | {delta} | "
            f"{result['mean_last_3']:.3f} | {eps} |"
        )
    norms = [n for n in results.get("clean-fedavg", {}).get("median_update_norm", []) if n is not None]
    if norms:
        lines += [
            "",
            f"Median L2 norm of a clean update (R + head), per round: {', '.join(f'{n:.2f}' for n in norms)}.",
        ]
    return lines


STUDY = Study(
    "robustness", "benchmarks.robustness", "Robustness and DP of federated LoRA-XS", rows, goals=poisoning_goals
)


def main(argv: list[str] | None = None) -> int:
    parser = case_parser(__doc__.split("\n\n")[0], rounds=5, default_out=RESULTS)
    parser.add_argument("--quick", action="store_true", help="the 10 %% cases and one noise level")
    parser.add_argument("--clip", type=float, default=2.0, help="clipping norm C for norm bounding and DP")
    parser.add_argument(
        "--local-epochs", type=float, default=None, help="clients' local epochs per round (default: the federation's)"
    )
    args = parser.parse_args(argv)
    todo = cases(args.clip, args.quick, args.local_epochs)
    return run_study(STUDY, todo, args, argv, size={"clip": args.clip, "local_epochs": args.local_epochs})


if __name__ == "__main__":
    raise SystemExit(main())
