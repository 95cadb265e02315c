"""The sweep behind the federation's default strategy and learning rates (docs/federation.md).

Each candidate is the real default command, `flower-simulation --num-clients 100` (MiniLM,
rotten-tomatoes, natural split, 10 rounds of 10 clients), with its own `--run-config`; one run
each, side by side on this machine. Per candidate: the final global accuracy, the largest drop
from one round to the next after round 4, the mean of the last three rounds, and the training
examples the federation saw (what a centralized baseline must be given to compare).

    python -m benchmarks.federation_sweep [--only NAME ...] [--rounds 10]
Writes benchmarks/results/federation_sweep.{json,md}; each run's folder under
benchmarks/results/federation_sweep/<name>/.
"""

import argparse
import json
import os
import platform
import sys
import time

from benchmarks.simulation_runs import RESULTS, run_case
CANDIDATES = {  # name -> run-config overrides of the defaults
    "fedavg-lr0.02-head0.05": "strategy='fedavg' lr=0.02 head-lr=0.05",
    "fedavg-lr0.02-head0.01": "strategy='fedavg' lr=0.02 head-lr=0.01",
    "fedavgm-s0.5-m0.5": "strategy='fedavgm' server-lr=0.5 server-momentum=0.5 lr=0.02 head-lr=0.05",
    "fedavgm-s0.5-m0.5-head0.01": "strategy='fedavgm' server-lr=0.5 server-momentum=0.5 lr=0.02 head-lr=0.01",
}


def run_candidate(name: str, overrides: str, rounds: int) -> dict:
    return run_case(RESULTS / "federation_sweep" / name, overrides, rounds)


def write_markdown(results: dict, meta: dict) -> str:
    lines = [f"# Federation sweep: default command, one run per candidate ({meta['date']}, {meta['cpus']} CPUs)", "",
             "| candidate | run-config | final | mean of last 3 | max drop after round 4 | examples seen | wall s |",
             "|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        if "error" in result:
            lines.append(f"| {name} | `{CANDIDATES[name]}` | failed: {result['error']} | | | | |")
            continue
        lines.append(f"| {name} | `{CANDIDATES[name]}` | {result['final_accuracy']:.3f} | {result['mean_last_3']:.3f} | "
                     f"{result['max_drop_after_round_4']:.3f} | {result['examples_trained']:,} | {result['wall_seconds']:.0f} |")
    lines += ["", f"Command: `{meta['command']}`; load average before {meta['load_before']}, after {meta['load_after']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CANDIDATES), help="run only these candidates")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    names = args.only or list(CANDIDATES)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "machine": platform.platform(),
            "load_before": round(os.getloadavg()[0], 2),
            "command": "python -m benchmarks.federation_sweep " + " ".join(argv if argv is not None else sys.argv[1:])}
    path = RESULTS / "federation_sweep.json"
    results = json.loads(path.read_text())["results"] if path.exists() else {}
    for name in names:
        print(f"{name}: {CANDIDATES[name]}", flush=True)
        results[name] = run_candidate(name, CANDIDATES[name], args.rounds)
        print(f"  -> {results[name]}", flush=True)
        path.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    meta["load_after"] = round(os.getloadavg()[0], 2)
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    (RESULTS / "federation_sweep.md").write_text(write_markdown({n: results[n] for n in CANDIDATES if n in results}, meta))
    print((RESULTS / "federation_sweep.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
