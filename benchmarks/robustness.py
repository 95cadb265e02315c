"""Privacy and robustness of federated LoRA-XS, measured with the real `flower-simulation`.

Poisoning: a seeded 10 % / 20 % of the 100 clients upload global - 10 * delta every round
(`--malicious-fraction`, attack flip-scale) under FedAvg, FedMedian, FedTrimmedAvg (beta 0.2) and
norm bounding (Flower's server-side fixed clipping with zero noise), against the clean FedAvg run.
Goal: at most 2 points lost at 10 % with a robust aggregator.
DP: Flower's server-side fixed-clipping DP at noise multipliers 0.5, 1, 2 (clipping norm C), with
the epsilon of Flower's RDP accountant (no amplification claimed).

    python -m benchmarks.robustness [--quick] [--rounds 5] [--clip 1.0] [--local-epochs E] [--only CASE ...]
Writes benchmarks/results/robustness.{json,md}; each run under benchmarks/results/robustness/<case>/.
`--quick`: the 10 % cases and one noise level. Every case is scored on the server's held-out set
only (final-eval-fraction 0: no per-client final evaluation); `--local-epochs E` sets the clients'
local epochs (the same for the clean run and every attack; the federation's default is 1).
"""

import argparse
import json
import os
import sys
import time

from benchmarks.result_files import goal, goal_lines
from benchmarks.simulation_runs import RESULTS, run_case

GOAL_POINTS = 2.0

ROBUST = {"fedavg": "strategy='fedavg'", "fedmedian": "strategy='fedmedian'",
          "fedtrimmedavg": "strategy='fedtrimmedavg' trimmed-beta=0.2",
          "norm-bound": "strategy='fedavg' dp='server-fixed' dp-noise-multiplier=0.0 dp-clipping-norm={clip}"}


SCORED_ON_SERVER = "final-eval-fraction=0.0"


def cases(clip: float, quick: bool, local_epochs: float | None = None) -> dict[str, str]:
    common = SCORED_ON_SERVER + (f" local-epochs={local_epochs}" if local_epochs else "")
    return {name: f"{overrides} {common}" for name, overrides in _cases(clip, quick).items()}


def _cases(clip: float, quick: bool) -> dict[str, str]:
    out = {"clean-fedavg": "strategy='fedavg'"}
    for share in ((10,) if quick else (10, 20)):
        for name, overrides in ROBUST.items():
            out[f"poison{share}-{name}"] = f"{overrides.format(clip=clip)} malicious-fraction={share / 100}"
    for z in ((1.0,) if quick else (0.5, 1.0, 2.0)):
        out[f"dp-z{z:g}"] = f"strategy='fedavg' dp='server-fixed' dp-noise-multiplier={z} dp-clipping-norm={clip}"
    return out


def poisoning_goals(results: dict) -> list[dict]:
    """At most GOAL_POINTS lost at 10 % poisoned with the best robust aggregator, vs clean FedAvg."""
    clean = results.get("clean-fedavg", {}).get("final_accuracy")
    robust = {name: results[f"poison10-{name}"]["final_accuracy"] for name in ROBUST if name != "fedavg"
              and "final_accuracy" in results.get(f"poison10-{name}", {})}
    if clean is None or not robust:
        return []
    best = max(robust, key=robust.get)
    lost = (clean - robust[best]) * 100
    return [goal(f"<= {GOAL_POINTS:g} points lost at 10 % poisoned clients with a robust aggregator",
                 f"{best}: {robust[best]:.3f} vs clean {clean:.3f} ({-lost:+.1f} points)", lost <= GOAL_POINTS,
                 "the robust rules also discard or clip honest updates in rounds of 10 clients")]


def write_markdown(results: dict, meta: dict) -> str:
    clean = results.get("clean-fedavg", {}).get("final_accuracy")
    lines = [f"# Robustness and DP of federated LoRA-XS ({meta['date']}, {meta['rounds']} rounds, 100 clients, "
             f"10 per round, clipping norm {meta['clip']}"
             + (f", {meta['local_epochs']:g} local epochs" if meta.get("local_epochs") else "")
             + ")", "",
             "| case | run-config | final accuracy | vs clean | mean of last 3 | epsilon (delta) |",
             "|---|---|---|---|---|---|"]
    for name, result in results.items():
        if "error" in result:
            lines.append(f"| {name} | `{meta['cases'][name]}` | failed: {result['error']} | | | |")
            continue
        delta = f"{result['final_accuracy'] - clean:+.3f}" if clean is not None else ""
        privacy = result.get("privacy") or {}
        eps = f"{privacy['epsilon']:.1f} ({privacy['delta']:g})" if privacy.get("epsilon") is not None else ""
        lines.append(f"| {name} | `{meta['cases'][name]}` | {result['final_accuracy']:.3f} | {delta} | "
                     f"{result['mean_last_3']:.3f} | {eps} |")
    norms = [n for n in results.get("clean-fedavg", {}).get("median_update_norm", []) if n is not None]
    if norms:
        lines += ["", f"Median L2 norm of a clean update (R + head), per round: {', '.join(f'{n:.2f}' for n in norms)}."]
    lines += ["", *goal_lines(poisoning_goals(results))]
    lines += ["", f"Command: `{meta['command']}`; load average before {meta['load_before']}, after {meta.get('load_after')}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clip", type=float, default=2.0, help="clipping norm C for norm bounding and DP")
    parser.add_argument("--local-epochs", type=float, default=None,
                        help="clients' local epochs per round (default: the federation's)")
    parser.add_argument("--only", nargs="*", help="run only these cases (names as in the table)")
    args = parser.parse_args(argv)
    todo = cases(args.clip, args.quick, args.local_epochs)
    names = [n for n in todo if not args.only or n in args.only]
    path = RESULTS / "robustness.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    same_size = [previous.get("meta", {}).get(k) for k in ("rounds", "local_epochs")] == [
        args.rounds, args.local_epochs]
    results = previous.get("results", {}) if same_size else {}
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "rounds": args.rounds, "clip": args.clip,
            "local_epochs": args.local_epochs,
            "cases": {**previous.get("meta", {}).get("cases", {}), **todo}, "cpus": os.cpu_count(),
            "load_before": round(os.getloadavg()[0], 2),
            "command": "python -m benchmarks.robustness " + " ".join(argv if argv is not None else sys.argv[1:])}
    for name in names:
        print(f"{name}: {todo[name]}", flush=True)
        results[name] = run_case(RESULTS / "robustness" / name, todo[name], args.rounds)
        print(f"  -> final {results[name].get('final_accuracy', results[name].get('error'))}", flush=True)
        path.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    meta["load_after"] = round(os.getloadavg()[0], 2)
    path.write_text(json.dumps({"meta": meta, "command": meta["command"], "results": results,
                                "goals": poisoning_goals(results)}, indent=2))
    (RESULTS / "robustness.md").write_text(write_markdown(results, meta))
    print((RESULTS / "robustness.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
