"""The one runner of the simulation studies: named cases, each the real `flower-simulation` with its
own `--run-config` overrides, run one after another and summarized from their reports.

A study (robustness, personalization, studies/mixed_ranks, studies/federation_sweep) gives its
cases, its table and its goals; this module gives the flags (`--rounds`, `--only`, `--out`), runs
each case into `<out>/<name>/<case>/`, keeps the results of an earlier run of the same size for
the cases not run again, and writes `<name>.json` / `<name>.md` through benchmarks/result_files.py
after every case (a run stopped early keeps what it has).
"""

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.result_files import REPO, command_line, footer, goal_lines, load_result, machine_now, write_result


@dataclass(frozen=True)
class Study:
    """name: the result files' stem and module (`benchmarks.<module>`); title: the markdown heading;
    rows(document) -> the markdown table's lines; goals(results) -> goal dicts; summary(report,
    run folder) -> what a case keeps of its report (default `summarize`)."""

    name: str
    module: str
    title: str
    rows: Callable[[dict], list[str]]
    goals: Callable[[dict], list[dict]] = lambda results: []
    summary: Callable[[dict, Path], dict] = field(default=lambda report, folder: summarize(report))
    num_clients: int = 100


def summarize(report: dict) -> dict:
    """The figures every study reads from a `flower-simulation` report."""
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


def run_case(folder: Path, overrides: str, rounds: int, num_clients: int = 100) -> dict:
    """`flower-simulation --num-clients N --rounds R --run-config OVERRIDES` into `folder`: its
    report, or {"error": the last line it printed}."""
    out = folder.relative_to(REPO) if folder.is_absolute() and folder.is_relative_to(REPO) else folder
    command = [
        str(Path(sys.executable).with_name("flower-simulation")),
        "--num-clients",
        str(num_clients),
        "--rounds",
        str(rounds),
        "--out",
        str(out),
        "--no-progress",
        "--run-config",
        overrides,
    ]
    began = time.time()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=3600)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1], "seconds": round(time.time() - began)}
    return json.loads((REPO / out / "report.json").read_text())


def case_parser(description: str, rounds: int, default_out: Path) -> argparse.ArgumentParser:
    """The flags every study takes; a study adds its own before parsing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--only", nargs="*", help="run only these cases (names as in the table)")
    parser.add_argument("--out", type=Path, default=default_out, help="results folder")
    return parser


def run_study(
    study: Study, cases: dict[str, str], args: argparse.Namespace, argv: list[str] | None, size: dict | None = None
) -> int:
    """Runs the selected `cases` (case -> run-config overrides); `size`: what must match for an
    earlier run's results to be kept (the rounds always do). Exit code 1 when a case failed."""
    unknown = sorted(set(args.only or ()) - set(cases))
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; choose from {', '.join(cases)}")
    size = {"rounds": args.rounds, **(size or {})}
    previous = load_result(args.out, study.name)
    results = dict(previous.get("results", {})) if previous.get("size") == size else {}
    document = {"command": command_line(study.module, argv), "machine": machine_now(), "size": size, "cases": cases}
    for name in args.only or list(cases):
        print(f"{name}: {cases[name]}", flush=True)
        folder = args.out / study.name / name
        report = run_case(folder, cases[name], args.rounds, study.num_clients)
        results[name] = report if "error" in report else study.summary(report, folder)
        print(f"  -> {results[name].get('final_accuracy', results[name].get('error'))}", flush=True)
        _write(study, document, results, args.out)
    _write(study, document, results, args.out)
    print((args.out / f"{study.name}.md").read_text())
    failed = [name for name in args.only or cases if "error" in results.get(name, {})]
    if failed:
        print(f"error: {', '.join(failed)} failed: " + "; ".join(results[n]["error"] for n in failed), file=sys.stderr)
    return 1 if failed else 0


def _write(study: Study, document: dict, results: dict, out: Path) -> None:
    document["results"] = {name: results[name] for name in document["cases"] if name in results}
    document["goals"] = study.goals(document["results"])
    write_result(out, study.name, document, markdown(study, document))


def markdown(study: Study, document: dict) -> str:
    lines = [f"# {study.title}", "", *study.rows(document), ""]
    if document.get("goals"):
        lines += [*goal_lines(document["goals"]), ""]
    return "\n".join(lines + [footer(document)]) + "\n"
