"""Mixed ranks: a third of the clients train rank 4, a third rank 8, a third rank 16, against all
at 16 and all at 4 (same scale alpha / r = 1), with the real `flower-simulation` (100 clients,
natural split). Accuracy and upload bytes per client per round.

    python -m benchmarks.studies.mixed_ranks [--rounds 10] [--only CASE ...] [--out DIR]
Writes <out>/mixed_ranks.{json,md} (default benchmarks/studies/results/); each run under <out>/mixed_ranks/<case>/.
"""

from benchmarks.result_files import STUDY_RESULTS
from benchmarks.simulation_cases import Study, case_parser, run_study

CASES = {
    "all-16": "rank=16 lora-alpha=16.0",
    "mixed-4-8-16-zero-pad": "rank=16 lora-alpha=16.0 client-ranks='4,8,16' mixed-rank-aggregation='zero-pad'",
    "mixed-4-8-16-per-entry": "rank=16 lora-alpha=16.0 client-ranks='4,8,16' mixed-rank-aggregation='per-entry'",
    "all-4": "rank=4 lora-alpha=4.0",
}


def rows(document: dict) -> list[str]:
    lines = [
        f"{document['size']['rounds']} rounds, 100 clients, 10 per round.",
        "",
        "| case | run-config | final accuracy | mean of last 3 | upload B / client / round |",
        "|---|---|---|---|---|",
    ]
    for name, result in document["results"].items():
        if "error" in result:
            lines.append(f"| {name} | `{CASES[name]}` | failed: {result['error']} | | |")
            continue
        lines.append(
            f"| {name} | `{CASES[name]}` | {result['final_accuracy']:.3f} | {result['mean_last_3']:.3f} | "
            f"{result['bytes_up_per_client_per_round']:,.0f} |"
        )
    return lines


STUDY = Study("mixed_ranks", "benchmarks.studies.mixed_ranks", "Mixed ranks", rows)


def main(argv: list[str] | None = None) -> int:
    args = case_parser(__doc__.split("\n\n")[0], rounds=10, default_out=STUDY_RESULTS).parse_args(argv)
    return run_study(STUDY, CASES, args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
