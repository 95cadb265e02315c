"""The core benchmarks, one after another, then benchmarks/RESULTS.md.

    python -m benchmarks.all                 # everything (<= 45 min on 2 cores): results/ + RESULTS.md
    python -m benchmarks.all --quick         # a <= 5 min subset: results/quick/ + results/quick/RESULTS.md
    python -m benchmarks.all --only pareto   # some of them; the others keep their earlier results
    python -m benchmarks.all --page-only     # RESULTS.md again from the result files, nothing run

Each benchmark is a module run alone as `python -m <module> ... --out <results>` (a child
process, so one failure or crash never stops the others); it writes `<result>.json` and
`<result>.md` into the results folder (benchmarks/result_files.py). One that exits non-zero is
reported as failed with its last output line. The one-off studies of benchmarks/studies/ are run
by hand, one at a time.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.result_files import RESULTS, command_line, load_average, machine_now
from benchmarks.results_page import STATUS_FILE, load_json, write_page

ROOT = Path(__file__).resolve().parents[1]
PAGE = Path(__file__).resolve().parent / "RESULTS.md"
QUICK = RESULTS / "quick"


@dataclass(frozen=True)
class Benchmark:
    """One registered benchmark: `module` writes `<result>.json` / `.md` (default `<name>`) into
    "{out}" of its arguments, `quick` (None: not in the quick subset) or `full`; timeout in seconds."""

    name: str
    item: str
    runner: str
    module: str
    quick: tuple[str, ...] | None = ("--quick", "--out", "{out}")
    full: tuple[str, ...] = ("--out", "{out}")
    timeout: float = 900.0
    result_name: str = ""

    @property
    def result(self) -> str:
        return self.result_name or self.name


# The full run's sizes keep `python -m benchmarks.all` within 45 minutes on 2 cores: the federated
# benchmarks run 2 rounds here (alone, each defaults to more); pareto trains LoRA at 0.002, the best
# of its lr sweep (0.708 at r=8 against 0.672 at 0.005 and 0.59 at 0.01, in the 18:01 full run and
# the one before), and scores on 500 held-out reviews; personalization lets 15 % of the clients
# evaluate; the latency benchmarks take medians of fewer repeats; robustness runs the poisoning
# cases only (dp_noise measures DP), half a local epoch, scored on the server; the ONNX
# benchmarks share two trained adapters (--work).
POISON_CASES = tuple(
    f"poison{share}-{name}" for share in (10, 20) for name in ("fedavg", "fedmedian", "fedtrimmedavg", "norm-bound")
)
ONNX_FOLDERS = ("rotten", "debian")

REGISTRY = (
    Benchmark(
        "bytes_per_round",
        "1 Bytes",
        "`wire_bytes` of Flower Messages built as the apps build them",
        "benchmarks.bytes_per_round",
        timeout=600,
    ),
    Benchmark(
        "participation_bytes",
        "1 Bytes per participation (derived factors)",
        "real ServerApp + ClientApp on the in-process Grid, `wire_bytes`",
        "benchmarks.participation_bytes",
        quick=None,
    ),
    Benchmark(
        "pareto",
        "2 Accuracy vs bytes",
        "in-process FedAvg loop `benchmarks/federated_loop.py` (same "
        "sampling, data and `shared/training.py` for every method)",
        "benchmarks.pareto",
        timeout=1800,
        full=("--lora-lrs", "0.002", "--eval-examples", "500", "--out", "{out}"),
    ),
    Benchmark(
        "personalization",
        "3 Personalization",
        "`flower-simulation --personalize finetune` (concept-shift, Dirichlet(0.1))",
        "benchmarks.personalization",
        quick=None,
        full=("--rounds", "2", "--final-eval-fraction", "0.15", "--out", "{out}"),
        timeout=1200,
    ),
    Benchmark(
        "robustness",
        "4 Privacy and robustness",
        "`flower-simulation` (DP, poisoning)",
        "benchmarks.robustness",
        quick=None,
        full=("--rounds", "2", "--local-epochs", "0.5", "--only", "clean-fedavg", *POISON_CASES, "--out", "{out}"),
        timeout=1800,
    ),
    Benchmark(
        "dp_noise",
        "4 Privacy: accuracy vs DP noise",
        "in-process loop `benchmarks/federated_loop.py` with Flower's DP-FedAvg functions",
        "benchmarks.dp_noise",
        quick=None,
        full=("--rounds", "2", "--out", "{out}"),
        timeout=1800,
    ),
    Benchmark(
        "speed_memory",
        "5 Speed and memory",
        "`shared/training.py` on identical batches; `flower-simulation` (Ray) for round times and RSS",
        "benchmarks.speed_memory",
        timeout=1200,
    ),
    Benchmark(
        "onnx",
        "6 ONNX",
        "`client.export` (onnxruntime)",
        "benchmarks.export",
        quick=None,
        full=("--folders", *ONNX_FOLDERS, "--work", "{out}/onnx_work", "--out", "{out}"),
        result_name="export",
    ),
    Benchmark(
        "small_data",
        "7 Small real folders",
        "`client.run` defaults (the `personalize` function) against "
        "TF-IDF + LR, frozen embeddings + LR and PEFT LoRA r=8, same splits",
        "benchmarks.small_data",
        quick=None,
        full=(
            "--folders",
            "debates",
            "debian",
            "manpages",
            "hamlet",
            "--methods",
            "tfidf",
            "frozen",
            "loraxs",
            "--out",
            "{out}",
        ),
        timeout=2400,
    ),
    Benchmark(
        "personal_parts",
        "7 Small real folders: the personal model's parts",
        "the small_data rows above (lexical part, temperature, ECE, int8) against the best baseline",
        "benchmarks.personal_parts",
        quick=None,
        full=("--runs", "{out}/small_data.json", "--out", "{out}"),
        timeout=120,
    ),
    Benchmark(
        "small_data_speed",
        "8 Time to accuracy on a device",
        "`client.run --data DIR` defaults in fresh processes: wall time, peak RSS, accuracy under a time budget",
        "benchmarks.small_data_speed",
        quick=None,
        full=("--folders", "debates", "debian", "--seeds", "0", "--budgets", "30", "--out", "{out}"),
        timeout=900,
    ),
    Benchmark(
        "onnx_training",
        "8 Training on a device with onnxruntime: step, message, install",
        "`client.export --training` artifacts against PyTorch eager, a node's training message, the device install",
        "benchmarks.onnx_training",
        quick=None,
        full=("--parts", "step", "message", "size", "--out", "{out}"),
        timeout=1800,
    ),
    Benchmark(
        "onnx_training_folders",
        "8 Training on a device with onnxruntime: small folders",
        "`client.run` on onnxruntime vs PyTorch, the same recipe, fresh processes",
        "benchmarks.onnx_training",
        quick=None,
        full=(
            "--parts",
            "folders",
            "--folders",
            "debian",
            "--seeds",
            "0",
            "--name",
            "onnx_training_folders",
            "--out",
            "{out}",
        ),
        timeout=1200,
        result_name="onnx_training_folders",
    ),
    Benchmark(
        "predict_startup",
        "6 ONNX start-up",
        "`client.predict` vs the PyTorch path, fresh processes",
        "benchmarks.predict_startup",
        quick=None,
        full=("--runs", "3", "--out", "{out}"),
    ),
)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def stop_group(child: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM to the child's process group, SIGKILL after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_benchmark(bench: Benchmark, quick: bool, out: Path) -> dict:
    """Runs one benchmark in a child process; its status (output kept in <out>/logs/<name>.log)."""
    module = bench.module
    if quick and bench.quick is None:
        return {"state": "not in the quick subset", "module": module, "seconds": 0.0}
    args = [a.replace("{out}", str(out)) for a in (bench.quick if quick else bench.full)]
    command = [sys.executable, "-m", module, *args]
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"== {bench.name}: {' '.join(command[1:])}", flush=True)
    limit = bench.timeout if not quick else max(300.0, bench.timeout / 3)
    child = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )  # its own process group: a timeout ends all it started
    try:
        stdout, stderr = child.communicate(timeout=limit)
        error = None if child.returncode == 0 else f"exit {child.returncode}: {last_line(stderr or stdout)}"
    except subprocess.TimeoutExpired:
        stop_group(child)
        stdout, stderr = child.communicate()
        error = f"ran past its {limit:.0f} s limit"
    except BaseException:  # the runner itself stopped (Ctrl-C, SIGTERM): so is the benchmark
        stop_group(child)
        raise
    (logs / f"{bench.name}.log").write_text(stdout + stderr)
    seconds = round(time.perf_counter() - started, 1)
    status = {
        "state": "ran" if error is None else "failed",
        "module": module,
        "seconds": seconds,
        "command": command_line(module, args),
    }
    if error:
        status["error"] = error
    print(f"== {bench.name}: {status['state']} in {seconds:.0f} s" + (f" ({error})" if error else ""), flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the <= 5 min subset, into results/quick/")
    parser.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--page-only", action="store_true", help="only rewrite RESULTS.md from the result files")
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default results/, quick: results/quick/)"
    )
    parser.add_argument(
        "--page",
        type=Path,
        default=None,
        help="RESULTS.md path (default benchmarks/RESULTS.md; quick: inside the results folder)",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # ends the running benchmark's group too
    out = args.out or (QUICK if args.quick else RESULTS)
    page = args.page or (out / "RESULTS.md" if args.quick else PAGE)
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - {b.name for b in REGISTRY}
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}; registered: {', '.join(b.name for b in REGISTRY)}")
    out.mkdir(parents=True, exist_ok=True)
    previous = load_json(out / STATUS_FILE) or {}
    run = {**previous, "statuses": dict(previous.get("statuses", {}))}
    if not args.page_only:
        machine = machine_now()
        run.update(command=command_line("benchmarks.all", argv), started=machine["date"], machine=machine)
        for bench in REGISTRY:
            if names and bench.name not in names:
                continue
            try:
                run["statuses"][bench.name] = run_benchmark(bench, args.quick, out)
            except (SystemExit, KeyboardInterrupt):  # stopped: say so on the page, then stop
                run["statuses"][bench.name] = {
                    "state": "failed",
                    "module": bench.module,
                    "seconds": 0.0,
                    "error": "stopped while running (SIGTERM / Ctrl-C)",
                }
                finish(run, out, page)
                raise
        finish(run, out, page)
    else:
        print(f"wrote {write_page(REGISTRY, out, page, run)}")
    if args.page_only:
        return 0
    failed = [n for n, s in run["statuses"].items() if s.get("state") == "failed" and (not names or n in names)]
    return 1 if failed else 0


def finish(run: dict, out: Path, page: Path) -> None:
    """The status file and the page, after the run (or when it is stopped)."""
    run["machine"]["load_average_after"] = load_average()
    run["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (out / STATUS_FILE).write_text(json.dumps(run, indent=2) + "\n")
    print(f"wrote {write_page(REGISTRY, out, page, run)}")


if __name__ == "__main__":
    raise SystemExit(main())
