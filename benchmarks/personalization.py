"""Personalization that never hurts: global vs personal accuracy on each client's own test split,
with the real `flower-simulation --personalize finetune` (issue 14, item 3; goals of issue 13).

    python -m benchmarks.personalization                 # concept-shift and Dirichlet(0.1), 10 rounds
    python -m benchmarks.personalization --rounds 2 --final-eval-fraction 0.2   # what `benchmarks.all` runs

Two scenarios, 100 clients, 10 per round, the default federation otherwise:
  - concept-shift: a seeded 20 % of the clients (natural split) have every label flipped;
  - dirichlet-0.1: label skew, Dirichlet(0.1) split, nobody flipped.
After the last round, 30 % of the clients (`--final-eval-fraction`) evaluate the final global
adapter and their personal one
(the global adapter fine-tuned by client.run's recipe and kept only where it beats the global one
on a held-out part of the client's training data; interpolated on the line between them).
Goals: personal >= global + 10 points on shifted clients, >= global - 0.3 points on the others.
Writes benchmarks/results/personalization.{json,md} (runs under benchmarks/results/personalization/).
"""

import argparse
import json
import sys
from pathlib import Path

from benchmarks.result_files import RESULTS, command_line, footer, goal, goal_lines, machine_now, write_result
from benchmarks.simulation_runs import run_case

NAME = "personalization"
SCENARIOS = {
    "concept-shift": "personalize='finetune' scenario='concept-shift' shift-fraction=0.2",
    "dirichlet-0.1": "personalize='finetune' partition='dirichlet' dirichlet-alpha=0.1",
}
SHIFTED_GOAL = 10.0  # points gained on shifted clients, at least
OTHERS_GOAL = -0.3  # points lost on the other clients, at most


def groups(final: dict) -> list[dict]:
    """Global vs personal per group of clients, from a report's `final` block."""
    rows = []
    for group, suffix in (("shifted", "_shifted"), ("others", "_unshifted"), ("all", "")):
        count = final.get("clients_final_evaluation") if group == "all" else final.get(f"clients{suffix}")
        glob, personal = final.get(f"accuracy_global{suffix or '_clients'}"), final.get(f"accuracy_personalized{suffix}")
        if not count or glob is None or personal is None:
            continue
        rows.append({"group": group, "clients": count, "global": round(glob, 4), "personal": round(personal, 4),
                     "points": round((personal - glob) * 100, 1)})
    return rows


def scenario_goals(name: str, rows: list[dict]) -> list[dict]:
    by_group = {row["group"]: row for row in rows}
    out = []
    if "shifted" in by_group:
        row = by_group["shifted"]
        out.append(goal(f"{name}: shifted clients gain >= {SHIFTED_GOAL:g} points",
                        f"{row['global']:.3f} -> {row['personal']:.3f} ({row['points']:+.1f})", row["points"] >= SHIFTED_GOAL,
                        "too few personal steps to undo a flipped concept"))
    others = by_group.get("others") or by_group.get("all")
    if others:
        out.append(goal(f"{name}: {others['group']} clients lose <= {-OTHERS_GOAL:g} points",
                        f"{others['global']:.3f} -> {others['personal']:.3f} ({others['points']:+.1f})",
                        others["points"] >= OTHERS_GOAL, "the held-out part of a small client is too small to choose on"))
    return out


def load_previous(path: Path, rounds: int, final_eval_fraction: float) -> dict:
    """The scenarios of an earlier result file of the same size ({} if none)."""
    try:
        document = json.loads(path.read_text())
        same = document.get("rounds") == rounds and document.get("final_eval_fraction", 0.3) == final_eval_fraction
        return dict(document["scenarios"]) if same else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def markdown(document: dict) -> str:
    lines = ["# Personalization: global vs personal adapter on each client's own test split", "",
             f"`flower-simulation`, 100 clients, 10 per round, {document['rounds']} rounds, `--personalize finetune`; "
             f"{document.get('final_eval_fraction', 0.3):.0%} of the clients evaluate both adapters after the last round.", "",
             "| scenario | clients | evaluated | global | personal | change (points) |", "|---|---|---:|---:|---:|---:|"]
    for name, result in document["scenarios"].items():
        if "error" in result:
            lines.append(f"| {name} | failed: {result['error']} | | | | |")
            continue
        for row in result["groups"]:
            lines.append(f"| {name} | {row['group']} | {row['clients']} | {row['global']:.3f} | {row['personal']:.3f} | "
                         f"{row['points']:+.1f} |")
    lines += ["", *goal_lines(document["goals"]), "", footer(document)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--final-eval-fraction", type=float, default=0.3,
                        help="share of the clients that evaluate both adapters after the last round")
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    machine = machine_now()
    previous = load_previous(args.out / f"{NAME}.json", args.rounds, args.final_eval_fraction)  # --only keeps the other scenario
    scenarios = {name: previous[name] for name in SCENARIOS if name in previous and name not in (args.only or SCENARIOS)}
    for name in args.only or list(SCENARIOS):
        print(f"{name}: {SCENARIOS[name]}", flush=True)
        run_dir = args.out / NAME / name
        summary = run_case(run_dir, f"{SCENARIOS[name]} final-eval-fraction={args.final_eval_fraction}", args.rounds)
        if "error" in summary:
            scenarios[name] = summary
            continue
        final = json.loads((run_dir / "report.json").read_text())["final"]
        scenarios[name] = {"final_accuracy": summary["final_accuracy"], "wall_seconds": summary["wall_seconds"],
                           "groups": groups(final)}
        print(f"  -> {scenarios[name]['groups']}", flush=True)
    scenarios = {name: scenarios[name] for name in SCENARIOS if name in scenarios}
    goals = [g for name, result in scenarios.items() if "groups" in result for g in scenario_goals(name, result["groups"])]
    document = {"command": command_line("benchmarks.personalization", argv), "machine": machine,
                "rounds": args.rounds, "final_eval_fraction": args.final_eval_fraction, "scenarios": scenarios,
                "goals": goals}
    write_result(args.out, NAME, document, markdown(document))
    print(markdown(document))
    failed = [name for name, result in scenarios.items() if "error" in result]
    if failed:
        print(f"error: {', '.join(failed)} failed: " + "; ".join(scenarios[n]["error"] for n in failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
