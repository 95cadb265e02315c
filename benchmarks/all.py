"""Every benchmark of issue 14, one after another, then benchmarks/RESULTS.md.

    python -m benchmarks.all                 # everything (<= 45 min on 2 cores): results/ + RESULTS.md
    python -m benchmarks.all --quick         # a <= 5 min subset: results/quick/ + results/quick/RESULTS.md
    python -m benchmarks.all --only pareto   # some of them; the others keep their earlier results
    python -m benchmarks.all --page-only     # RESULTS.md again from the result files, nothing run

Each benchmark is a module run alone as `python -m <module> ...` (a child process, so one
failure or crash never stops the others); it writes `<result>.json` and `<result>.md` into the
results folder (benchmarks/result_files.py). A benchmark whose module does not exist (yet) is
reported as missing, one that exits non-zero as failed with its last output line. The first
module of a benchmark's candidates that exists is the one run.
"""

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.result_files import RESULTS, machine_now
from benchmarks.results_page import STATUS_FILE, load_json, write_page

ROOT = Path(__file__).resolve().parents[1]
PAGE = Path(__file__).resolve().parent / "RESULTS.md"
QUICK = RESULTS / "quick"


@dataclass(frozen=True)
class Benchmark:
    """One registered benchmark. candidates: (module, result file stem) alternatives; quick /
    full: its arguments, "{out}" standing for the results folder (quick None: not in the quick
    subset); fixed_out: it always writes into benchmarks/results/ (no --out); timeout in seconds."""

    name: str
    item: str
    runner: str
    candidates: tuple[tuple[str, str], ...]
    quick: tuple[str, ...] | None = ("--quick", "--out", "{out}")
    full: tuple[str, ...] = ("--out", "{out}")
    timeout: float = 900.0
    fixed_out: bool = False

    def resolve(self) -> tuple[str, str] | None:
        for module, result in self.candidates:
            try:
                if importlib.util.find_spec(module) is not None:
                    return module, result
            except ModuleNotFoundError:
                continue
        return None

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(module for module, _ in self.candidates)

    @property
    def result(self) -> str:
        found = self.resolve()
        return found[1] if found else self.candidates[0][1]

    def folder(self, out: Path) -> Path:
        """Where its result files are: `out`, or benchmarks/results/ for a fixed_out benchmark."""
        return RESULTS if self.fixed_out else out


# The full run's sizes keep `python -m benchmarks.all` within 45 minutes on 2 cores: the federated
# benchmarks run 2 rounds here (alone, each defaults to more); pareto trains LoRA at 0.002, the best
# of its lr sweep (0.708 at r=8 against 0.672 at 0.005 and 0.59 at 0.01, in the 18:01 full run and
# the one before), and scores on 500 held-out reviews; personalization lets 15 % of the clients
# evaluate; the latency benchmarks take medians of fewer repeats; robustness runs the poisoning
# cases only (dp_noise measures DP), half a local epoch, scored on the server; the ONNX
# benchmarks share two trained adapters (--work).
POISON_CASES = tuple(f"poison{share}-{name}" for share in (10, 20)
                     for name in ("fedavg", "fedmedian", "fedtrimmedavg", "norm-bound"))
ONNX_FOLDERS = ("rotten", "debian")

# Others' benchmarks (issues 11, 12/13, 15, DP / poisoning) are run with their own defaults; they
# join the quick subset when they get a quick mode that writes into --out.
REGISTRY = (
    Benchmark("bytes_per_round", "1 Bytes", "`wire_bytes` of Flower Messages built as the apps build them",
              (("benchmarks.bytes_per_round", "bytes_per_round"),), timeout=600),
    Benchmark("participation_bytes", "1 Bytes per participation (derived factors, issue 11)",
              "real ServerApp + ClientApp on the in-process Grid, `wire_bytes`",
              (("benchmarks.participation_bytes", "participation_bytes"),), quick=None, full=(),
              fixed_out=True),
    Benchmark("pareto", "2 Accuracy vs bytes", "in-process FedAvg loop `benchmarks/federated_loop.py` (same "
              "sampling, data and `shared/training.py` for every method)",
              (("benchmarks.pareto", "pareto"),), timeout=1800,
              full=("--lora-lrs", "0.002", "--eval-examples", "500", "--out", "{out}")),
    Benchmark("personalization", "3 Personalization", "`flower-simulation --personalize finetune` "
              "(concept-shift, Dirichlet(0.1))", (("benchmarks.personalization", "personalization"),), quick=None,
              full=("--rounds", "2", "--final-eval-fraction", "0.15", "--out", "{out}"), timeout=1200),
    Benchmark("robustness", "4 Privacy and robustness", "`flower-simulation` (DP, poisoning)",
              (("benchmarks.robustness", "robustness"), ("benchmarks.privacy_robustness", "privacy_robustness")),
              quick=None, full=("--rounds", "2", "--local-epochs", "0.5", "--only", "clean-fedavg", *POISON_CASES),
              timeout=1800,
              fixed_out=True),
    Benchmark("dp_noise", "4 Privacy: accuracy vs DP noise", "in-process loop `benchmarks/federated_loop.py` "
              "with Flower's DP-FedAvg functions", (("benchmarks.dp_noise", "dp_noise"),), quick=None,
              full=("--rounds", "2"), timeout=1800, fixed_out=True),
    Benchmark("speed_memory", "5 Speed and memory", "`shared/training.py` on identical batches; "
              "`flower-simulation` (Ray) for round times and RSS",
              (("benchmarks.speed_memory", "speed_memory"),), timeout=1200),
    Benchmark("onnx", "6 ONNX", "`client.export` (onnxruntime)",
              (("benchmarks.onnx", "onnx"), ("benchmarks.export", "export")), quick=None,
              full=("--folders", *ONNX_FOLDERS, "--work", "{out}/onnx_work", "--out", "{out}")),
    Benchmark("int8_recipes", "6 ONNX int8 on trained adapters", "onnxruntime quantization recipes",
              (("benchmarks.int8_recipes", "int8_recipes"),), quick=None,
              full=("--folders", *ONNX_FOLDERS, "--work", "{out}/onnx_work", "--repeats", "15", "--out", "{out}")),
    Benchmark("predict_startup", "6 ONNX start-up", "`client.predict` vs the PyTorch path, fresh processes",
              (("benchmarks.predict_startup", "predict_startup"),), quick=None, full=("--runs", "3", "--out", "{out}")),
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
    found = bench.resolve()
    if found is None:
        return {"state": "missing", "module": bench.modules[0],
                "error": f"no module {' or '.join(bench.modules)} (not built yet)", "seconds": 0.0}
    module, _ = found
    if quick and bench.quick is None:
        return {"state": "not in the quick subset", "module": module, "seconds": 0.0}
    args = [a.replace("{out}", str(out)) for a in (bench.quick if quick else bench.full)]
    command = [sys.executable, "-m", module, *args]
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"== {bench.name}: {' '.join(command[1:])}", flush=True)
    limit = bench.timeout if not quick else max(300.0, bench.timeout / 3)
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)  # its own process group: a timeout ends all it started
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
    status = {"state": "ran" if error is None else "failed", "module": module, "seconds": seconds,
              "command": "python -m " + " ".join([module, *args])}
    if error:
        status["error"] = error
    print(f"== {bench.name}: {status['state']} in {seconds:.0f} s" + (f" ({error})" if error else ""), flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the <= 5 min subset, into results/quick/")
    parser.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--page-only", action="store_true", help="only rewrite RESULTS.md from the result files")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default results/, quick: results/quick/)")
    parser.add_argument("--page", type=Path, default=None, help="RESULTS.md path (default benchmarks/RESULTS.md; "
                        "quick: inside the results folder)")
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
        command = "python -m benchmarks.all " + " ".join(argv if argv is not None else sys.argv[1:])
        machine = machine_now()
        run.update(command=command.strip(), started=machine["date"], machine=machine)
        for bench in REGISTRY:
            if names and bench.name not in names:
                continue
            try:
                run["statuses"][bench.name] = run_benchmark(bench, args.quick, out)
            except (SystemExit, KeyboardInterrupt):  # stopped: say so on the page, then stop
                run["statuses"][bench.name] = {"state": "failed", "module": bench.resolve()[0], "seconds": 0.0,
                                               "error": "stopped while running (SIGTERM / Ctrl-C)"}
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
    run["machine"]["load_average_after"] = round(os.getloadavg()[0], 2)
    run["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (out / STATUS_FILE).write_text(json.dumps(run, indent=2) + "\n")
    print(f"wrote {write_page(REGISTRY, out, page, run)}")


if __name__ == "__main__":
    raise SystemExit(main())
