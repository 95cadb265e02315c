"""Mixed ranks: a third of the clients train rank 4, a third rank 8, a third rank 16, against all
at 16 and all at 4 (same scale alpha / r = 1), with the real `flower-simulation` (100 clients,
natural split). Accuracy and upload bytes per client per round.

    python -m benchmarks.mixed_ranks [--rounds 10] [--only CASE ...]
Writes benchmarks/results/mixed_ranks.{json,md}; each run under benchmarks/results/mixed_ranks/<case>/.
"""

import argparse
import json
import os
import sys
import time

from benchmarks.simulation_runs import RESULTS, run_case

CASES = {
    "all-16": "rank=16 lora-alpha=16.0",
    "mixed-4-8-16-zero-pad": "rank=16 lora-alpha=16.0 client-ranks='4,8,16' mixed-rank-aggregation='zero-pad'",
    "mixed-4-8-16-per-entry": "rank=16 lora-alpha=16.0 client-ranks='4,8,16' mixed-rank-aggregation='per-entry'",
    "all-4": "rank=4 lora-alpha=4.0",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--only", nargs="*", choices=sorted(CASES))
    args = parser.parse_args(argv)
    path = RESULTS / "mixed_ranks.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    results = previous.get("results", {}) if previous.get("meta", {}).get("rounds") == args.rounds else {}
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "rounds": args.rounds, "load_before": round(os.getloadavg()[0], 2),
            "command": "python -m benchmarks.mixed_ranks " + " ".join(argv if argv is not None else sys.argv[1:])}
    for name in args.only or list(CASES):
        print(f"{name}: {CASES[name]}", flush=True)
        results[name] = run_case(RESULTS / "mixed_ranks" / name, CASES[name], args.rounds)
        print(f"  -> {results[name].get('final_accuracy', results[name].get('error'))}", flush=True)
        path.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = [f"# Mixed ranks ({meta['date']}, {args.rounds} rounds, 100 clients, 10 per round)", "",
             "| case | run-config | final accuracy | mean of last 3 | upload B / client / round |", "|---|---|---|---|---|"]
    for name in CASES:
        result = results.get(name)
        if result is None:
            continue
        if "error" in result:
            lines.append(f"| {name} | `{CASES[name]}` | failed: {result['error']} | | |")
            continue
        lines.append(f"| {name} | `{CASES[name]}` | {result['final_accuracy']:.3f} | {result['mean_last_3']:.3f} | "
                     f"{result['bytes_up_per_client_per_round']:,.0f} |")
    lines += ["", f"Command: `{meta['command']}`; load average before {meta['load_before']}."]
    (RESULTS / "mixed_ranks.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "mixed_ranks.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
