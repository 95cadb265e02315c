"""Run the real `flower-simulation` command with a run-config override and summarize its report
(shared by the sweep and robustness benchmarks)."""

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def summarize(report: dict) -> dict:
    accuracies = [r["accuracy_global"] for r in report["rounds"]]
    drops = [before - after for before, after in zip(accuracies[3:], accuracies[4:])]  # rounds 5.. vs previous
    final = report["final"]
    return {
        "final_accuracy": final["accuracy_global"],
        "accuracy_per_round": accuracies,
        "max_drop_after_round_4": round(max(drops, default=0.0), 4),
        "mean_last_3": round(sum(accuracies[-3:]) / len(accuracies[-3:]), 4),
        "examples_trained": sum(r.get("examples_trained", 0) for r in report["rounds"]),
        "median_update_norm": [r.get("median_update_norm") for r in report["rounds"]],
        "bytes_up_per_client_per_round": final.get("bytes_up_per_client_per_round"),
        "privacy": final.get("privacy"),
        "wall_seconds": final["wall_seconds"],
    }


def run_case(out: Path, overrides: str, rounds: int, num_clients: int = 100, extra: list[str] | None = None) -> dict:
    """`flower-simulation --num-clients N --rounds R --run-config OVERRIDES` into `out`."""
    command = [str(Path(sys.executable).with_name("flower-simulation")), "--num-clients", str(num_clients),
               "--rounds", str(rounds), "--out", str(out), "--no-progress", "--run-config", overrides,
               *(extra or [])]
    began = time.time()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=3600)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1], "seconds": round(time.time() - began)}
    return summarize(json.loads((out / "report.json").read_text()))
