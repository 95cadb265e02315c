"""Personalization that never hurts: global vs personal accuracy on each client's own test split,
with the real `flower-simulation --personalize finetune`.

    python -m benchmarks.personalization                 # concept-shift and Dirichlet(0.1), 10 rounds
    python -m benchmarks.personalization --rounds 2 --final-eval-fraction 0.15   # what `benchmarks.all` runs

Two scenarios, 100 clients, 10 per round, the default federation otherwise:
  - concept-shift: a seeded 20 % of the clients (natural split) have every label flipped;
  - dirichlet-0.1: label skew, Dirichlet(0.1) split, nobody flipped.
After the last round, 30 % of the clients (`--final-eval-fraction`) evaluate the final global
adapter and their personal one
(the global adapter fine-tuned by client.run's recipe and kept only where it beats the global one
on a held-out part of the client's training data; interpolated on the line between them).
Goals: personal >= global + 10 points on shifted clients, >= global - 0.3 points on the others.
Writes <out>/personalization.{json,md} (default benchmarks/results/; runs under <out>/personalization/).
"""

from benchmarks.result_files import RESULTS, goal
from benchmarks.simulation_cases import Study, case_parser, run_study

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
        glob, personal = (
            final.get(f"accuracy_global{suffix or '_clients'}"),
            final.get(f"accuracy_personalized{suffix}"),
        )
        if not count or glob is None or personal is None:
            continue
        rows.append(
            {
                "group": group,
                "clients": count,
                "global": round(glob, 4),
                "personal": round(personal, 4),
                "points": round((personal - glob) * 100, 1),
            }
        )
    return rows


def scenario_goals(name: str, rows: list[dict]) -> list[dict]:
    by_group = {row["group"]: row for row in rows}
    out = []
    if "shifted" in by_group:
        row = by_group["shifted"]
        out.append(
            goal(
                f"{name}: shifted clients gain >= {SHIFTED_GOAL:g} points",
                f"{row['global']:.3f} -> {row['personal']:.3f} ({row['points']:+.1f})",
                row["points"] >= SHIFTED_GOAL,
                "too few personal steps to undo a flipped concept",
            )
        )
    others = by_group.get("others") or by_group.get("all")
    if others:
        out.append(
            goal(
                f"{name}: {others['group']} clients lose <= {-OTHERS_GOAL:g} points",
                f"{others['global']:.3f} -> {others['personal']:.3f} ({others['points']:+.1f})",
                others["points"] >= OTHERS_GOAL,
                "the held-out part of a small client is too small to choose on",
            )
        )
    return out


def summary(report: dict, folder) -> dict:
    """What a scenario keeps: its final global accuracy, wall time and the per-group table."""
    final = report["final"]
    return {"final_accuracy": final["accuracy_global"], "wall_seconds": final["wall_seconds"], "groups": groups(final)}


def all_goals(results: dict) -> list[dict]:
    return [g for name, result in results.items() if "groups" in result for g in scenario_goals(name, result["groups"])]


def rows(document: dict) -> list[str]:
    size = document["size"]
    lines = [
        f"`flower-simulation`, 100 clients, 10 per round, {size['rounds']} rounds, `--personalize finetune`; "
        f"{size['final_eval_fraction']:.0%} of the clients evaluate both adapters after the last round.",
        "",
        "| scenario | clients | evaluated | global | personal | change (points) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, result in document["results"].items():
        if "error" in result:
            lines.append(f"| {name} | failed: {result['error']} | | | | |")
            continue
        for row in result["groups"]:
            lines.append(
                f"| {name} | {row['group']} | {row['clients']} | {row['global']:.3f} | {row['personal']:.3f} | "
                f"{row['points']:+.1f} |"
            )
    return lines


STUDY = Study(
    NAME,
    "benchmarks.personalization",
    "Personalization: global vs personal adapter on each client's own test split",
    rows,
    goals=all_goals,
    summary=summary,
)


def main(argv: list[str] | None = None) -> int:
    parser = case_parser(__doc__.splitlines()[0], rounds=10, default_out=RESULTS)
    parser.add_argument(
        "--final-eval-fraction",
        type=float,
        default=0.3,
        help="share of the clients that evaluate both adapters after the last round",
    )
    args = parser.parse_args(argv)
    cases = {
        name: f"{overrides} final-eval-fraction={args.final_eval_fraction}" for name, overrides in SCENARIOS.items()
    }
    return run_study(STUDY, cases, args, argv, size={"final_eval_fraction": args.final_eval_fraction})


if __name__ == "__main__":
    raise SystemExit(main())
