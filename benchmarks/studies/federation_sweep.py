"""The sweep behind the federation's default strategy and learning rates (docs/federation.md).

Each candidate is the real default command, `flower-simulation --num-clients 100` (MiniLM,
rotten-tomatoes, natural split, 10 rounds of 10 clients), with its own `--run-config`; one run
each, side by side on this machine. Per candidate: the final global accuracy, the largest drop
from one round to the next after round 4, the mean of the last three rounds, and the training
examples the federation saw (what a centralized baseline must be given to compare).

    python -m benchmarks.studies.federation_sweep [--only NAME ...] [--rounds 10] [--out DIR]
Writes <out>/federation_sweep.{json,md} (default benchmarks/studies/results/); each run's folder
under <out>/federation_sweep/<name>/.
"""

from benchmarks.result_files import STUDY_RESULTS
from benchmarks.simulation_cases import Study, case_parser, run_study

CANDIDATES = {  # name -> run-config overrides of the defaults
    "fedavg-lr0.02-head0.05": "strategy='fedavg' lr=0.02 head-lr=0.05",
    "fedavg-lr0.02-head0.01": "strategy='fedavg' lr=0.02 head-lr=0.01",
    "fedavgm-s0.5-m0.5": "strategy='fedavgm' server-lr=0.5 server-momentum=0.5 lr=0.02 head-lr=0.05",
    "fedavgm-s0.5-m0.5-head0.01": "strategy='fedavgm' server-lr=0.5 server-momentum=0.5 lr=0.02 head-lr=0.01",
}


def rows(document: dict) -> list[str]:
    lines = [
        "| candidate | run-config | final | mean of last 3 | max drop after round 4 | examples seen | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in document["results"].items():
        if "error" in result:
            lines.append(f"| {name} | `{CANDIDATES[name]}` | failed: {result['error']} | | | | |")
            continue
        lines.append(
            f"| {name} | `{CANDIDATES[name]}` | {result['final_accuracy']:.3f} | {result['mean_last_3']:.3f} | "
            f"{result['max_drop_after_round_4']:.3f} | {result['examples_trained']:,} | {result['wall_seconds']:.0f} |"
        )
    return lines


STUDY = Study(
    "federation_sweep",
    "benchmarks.studies.federation_sweep",
    "Federation sweep: default command, one run per candidate",
    rows,
)


def main(argv: list[str] | None = None) -> int:
    args = case_parser(__doc__.split("\n\n")[0], rounds=10, default_out=STUDY_RESULTS).parse_args(argv)
    return run_study(STUDY, CANDIDATES, args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
