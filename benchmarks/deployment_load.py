"""A SuperLink under load: N SuperNodes on loopback (one process each), R federated rounds, for
several N, to see what one SuperLink serves and where a one-machine deployment breaks.

    python -m benchmarks.deployment_load [--nodes 10 25 50] [--rounds 3] [--fraction 1.0]
                                         [--model tiny|minilm] [--examples 20] [--level-timeout 900]
                                         [--min-free-gib 4]

For each N: a SuperLink and N SuperNodes (deployment/local.py), each on its own data folder of
synthetic reviews, then `flwr run` with a seeded `--fraction` of the nodes training in each round
(the run config's fraction-train; 1.0 = every node, every round) and no federated evaluation
(fraction-evaluate 0, final-eval-fraction 0). Before round 1 the ServerApp asks every node once
which partition it serves (server/strategy.py): one flwr-clientapp per node, whatever the fraction.
Measured:
  - seconds until all N SuperNodes are online, and per round (the ServerApp's report.json);
  - bytes up / down per round (the report's byte counters: serialized arrays, factors included);
  - CPU seconds and peak memory (RSS) of the SuperLink, sampled every 0.5 s from /proc through
    psutil: flower-superlink itself, and with the ServerApp it runs (flwr-serverapp);
  - the peak number of flwr-clientapp processes alive at once and the largest one's RSS, the peak
    RSS of everything started, and the machine's MemAvailable before the level and at its lowest;
  - with all N nodes connected and no run yet: the RSS and PSS of the SuperNode processes and their
    flower-superexec launchers, and MemAvailable, i.e. what an idle node costs.
A level that runs out of time, or brings MemAvailable under --min-free-gib (its flwr-clientapp
processes are killed at once, then the level is stopped, before the kernel's OOM killer picks a
process of someone else), is recorded as broken with the reason, the logs' last lines and the line
that says why (benchmarks/deployment_load_report.py); larger levels are skipped. Every process a
level starts carries an environment tag; after the level none may be left (any leftover is killed
and the benchmark fails). Results: benchmarks/results/deployment_load.json and .md, one run per
fraction kept side by side (a new run replaces only the one with its fraction).

Model: `tiny` (default) is the 2-layer, 32-wide seeded BERT of simulations/tiny_models.py, rank 4. On a
2-core machine a round costs every node a fresh flwr-clientapp process (torch + transformers
imports, ~5 CPU-seconds, benchmarks/studies/results/deployment_overhead.md) whatever the model, so the
client side is what saturates; MiniLM would add its training and model load per message on top
and leave no room to see the SuperLink itself. `minilm` is there for a small N.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from benchmarks.deployment_load_report import break_reason, error_summary, last_round_started, markdown, merged_runs
from benchmarks.result_files import command_line, load_average, machine_now
from benchmarks.synthetic_reviews import LABELS, write_synthetic_reviews
from deployment.local import DeploymentConfig, LocalDeployment
from deployment.process_tree import pids_with_environment
from deployment.supernode import quoted_config_value
from shared.errors import LoraXSError

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TAG_VARIABLE = "LORAXS_LOAD_RUN"  # every process a level starts inherits it
# The SuperLink side: flower-superlink and the ServerApp it runs (flwr-serverapp). Its
# flower-superexec launcher (role "flower-superexec-superlink", told from the SuperNodes' by its
# parent) is left out, as in the first run of this benchmark.
SUPERLINK_TREE = ("flower-superlink", "flwr-serverapp")
NODE_ROLES = ("flower-supernode", "flower-superexec")  # what an idle SuperNode costs: itself and its launcher
SAMPLE_EVERY_S = 0.5
MEMORY_CHECK_EVERY_S = 0.1
IDLE_WINDOW_S = 10.0  # SuperLink CPU with all nodes connected and no run: the cost of their polling
GIB = 1024**3


@dataclass
class Samples:
    """What the sampler saw during one level."""

    cpu_s: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds (user + system)
    peak_rss: dict[str, int] = field(default_factory=dict)  # role -> peak summed RSS, bytes
    peak_clientapps: int = 0
    peak_process_rss: dict[str, int] = field(default_factory=dict)  # role -> the largest single process
    peak_everything_rss: int = 0
    min_available: int = 0
    samples: int = 0
    memory_guard: dict | None = None  # what the sampler saw when MemAvailable first fell under the floor


def role_of(proc: psutil.Process) -> str:
    """flower-superlink / flower-superexec (a SuperNode's launcher) / flower-superexec-superlink /
    flwr-serverapp / flwr-clientapp / flower-supernode / other."""
    try:
        text = " ".join(proc.cmdline()[:3])
        for name in ("flower-superlink", "flower-superexec", "flwr-serverapp", "flwr-clientapp", "flower-supernode"):
            if name in text:
                parent = proc.parent() if name == "flower-superexec" else None
                if parent is not None and "flower-superlink" in " ".join(parent.cmdline()[:3]):
                    return "flower-superexec-superlink"
                return name
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "gone"
    return "other"


def tagged_pids(tag: str) -> list[int]:
    """Processes whose environment holds our tag: everything a level started, however detached."""
    return pids_with_environment(TAG_VARIABLE, tag)


class Sampler(threading.Thread):
    """Samples the tagged processes every 0.5 s; `over_memory` is set when MemAvailable drops
    under the floor. CPU seconds per process are its last seen cumulative times, summed per role
    (a flwr-clientapp that lived between two samples is missed: its CPU is the clients', not the
    SuperLink's, and the SuperLink tree lives for the whole level)."""

    def __init__(self, tag: str, min_free: int):
        super().__init__(daemon=True)
        self.tag, self.min_free = tag, min_free
        self.result = Samples(min_available=psutil.virtual_memory().available)
        self.started = time.monotonic()
        self.over_memory = threading.Event()
        self._halt = threading.Event()
        self._procs: dict[int, psutil.Process] = {}
        self._roles: dict[int, str] = {}
        self._cpu: dict[int, float] = {}

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            for _ in range(int(SAMPLE_EVERY_S / MEMORY_CHECK_EVERY_S)):  # memory checked more often
                if self._halt.wait(MEMORY_CHECK_EVERY_S):
                    return
                if psutil.virtual_memory().available < self.min_free:
                    self.sample()

    def sample(self) -> None:
        rss: dict[str, int] = {}
        largest: dict[str, int] = {}
        clientapps = 0
        for pid in tagged_pids(self.tag):
            if pid not in self._procs:
                try:
                    self._procs[pid] = psutil.Process(pid)
                except psutil.NoSuchProcess:
                    continue
                self._roles[pid] = role_of(self._procs[pid])
            proc, role = self._procs[pid], self._roles[pid]
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    memory = proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            self._cpu[pid] = times.user + times.system
            rss[role] = rss.get(role, 0) + memory
            largest[role] = max(largest.get(role, 0), memory)
            clientapps += role == "flwr-clientapp"
        result = self.result
        result.samples += 1
        for role, value in rss.items():
            result.peak_rss[role] = max(result.peak_rss.get(role, 0), value)
            result.peak_process_rss[role] = max(result.peak_process_rss.get(role, 0), largest[role])
        result.peak_everything_rss = max(result.peak_everything_rss, sum(rss.values()))
        result.peak_clientapps = max(result.peak_clientapps, clientapps)
        available = psutil.virtual_memory().available
        result.min_available = min(result.min_available, available)
        if available < self.min_free:
            if result.memory_guard is None:
                result.memory_guard = {
                    "seconds_into_level": round(time.monotonic() - self.started, 1),
                    "clientapps_alive": clientapps,
                    "clientapp_rss_mib": round(rss.get("flwr-clientapp", 0) / 2**20, 1),
                    "everything_rss_mib": round(sum(rss.values()) / 2**20, 1),
                    "mem_available_gib": round(available / GIB, 2),
                }
            self.over_memory.set()
            self.kill_clientapps()

    def kill_clientapps(self) -> None:
        """Memory runs out: our flwr-clientapp processes go at once (50 of them grow by ~2 GB/s
        while importing torch), before the orderly stop and before the OOM killer picks anyone's."""
        for pid, proc in list(self._procs.items()):
            if self._roles.get(pid) == "flwr-clientapp":
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass

    def idle_snapshot(self, nodes: int) -> dict:
        """Per role: processes, summed RSS and PSS (shared pages split between their users); and
        what one idle SuperNode costs (itself + its launcher, RSS and PSS, per node)."""
        by_role: dict[str, dict] = {}
        for pid in tagged_pids(self.tag):
            proc = self._procs.get(pid)
            if proc is None:
                continue
            try:
                memory = proc.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            entry = by_role.setdefault(self._roles[pid], {"processes": 0, "rss_mib": 0.0, "pss_mib": 0.0})
            entry["processes"] += 1
            entry["rss_mib"] += memory.rss / 2**20
            entry["pss_mib"] += getattr(memory, "pss", 0) / 2**20
        nodes_part = [by_role.get(role, {}) for role in NODE_ROLES]
        return {
            "by_role": {role: {k: round(v, 1) for k, v in e.items()} for role, e in by_role.items()},
            "node_rss_mib_per_node": round(sum(e.get("rss_mib", 0.0) for e in nodes_part) / nodes, 1),
            "node_pss_mib_per_node": round(sum(e.get("pss_mib", 0.0) for e in nodes_part) / nodes, 1),
        }

    def cpu_by_role(self) -> dict[str, float]:
        cpu: dict[str, float] = {}
        for pid, seconds in list(self._cpu.items()):
            cpu[self._roles[pid]] = cpu.get(self._roles[pid], 0.0) + seconds
        return cpu

    def stop(self) -> Samples:
        self._halt.set()
        self.join(timeout=10)
        self.result.cpu_s = {role: round(value, 2) for role, value in self.cpu_by_role().items()}
        return self.result


def run_config(nodes: int, rounds: int, model: str, out_dir: Path, round_timeout: float, fraction: float = 1.0) -> str:
    """The `--run-config` of one level: `fraction` of the nodes train per round, none evaluates."""
    values = {
        "num-clients": nodes,
        "num-server-rounds": rounds,
        "fraction-train": fraction,
        "min-train-nodes": 1,
        "fraction-evaluate": 0.0,
        "final-eval-fraction": 0.0,
        "dataset": "",
        "labels": ",".join(LABELS),
        "personalize": "none",
        "local-epochs": 1.0,
        "batch-size": 8,
        "max-length": 32,
        "round-timeout": round_timeout,
        "out-dir": str(out_dir),
    }
    if model == "tiny":
        values.update({"model": str(tiny_model_dir()), "rank": 4})
    else:
        values.update({"rank": 16})
    return " ".join(f"{k}={quoted_config_value(v) if isinstance(v, str) else v}" for k, v in values.items())


_TINY: list[Path] = []


def training_artifacts(model: str, folder: Path) -> Path:
    """`client.export --training` for the level's model and rank: what every onnx SuperNode trains with."""
    target = folder / "onnx-training"
    which = ["--model", str(tiny_model_dir()), "--rank", "4"] if model == "tiny" else ["--rank", "16"]
    subprocess.run([sys.executable, "-m", "client.export", "--training", str(target), *which], cwd=REPO, check=True)
    return target


def tiny_model_dir() -> Path:
    if not _TINY:
        from simulations.tiny_models import make_tiny_bert

        folder = Path(tempfile.mkdtemp(prefix="loraxs-load-model-"))
        _TINY.append(make_tiny_bert(folder / "tiny-bert"))
    return _TINY[0]


def run_level(
    nodes: int,
    rounds: int,
    model: str,
    examples: int,
    timeout: float,
    min_free: int,
    workdir: Path,
    fraction: float = 1.0,
    onnx_model_dir: Path | None = None,
) -> dict:
    """One level: N SuperNodes, R rounds; everything it started is gone when it returns."""
    tag = uuid.uuid4().hex
    os.environ[TAG_VARIABLE] = tag  # inherited by the SuperLink, SuperNodes and all they start
    data_dirs = tuple(write_synthetic_reviews(workdir / f"node-{i}", examples) for i in range(nodes))
    out_dir = workdir / "server-out"
    config = run_config(nodes, rounds, model, out_dir, round_timeout=timeout, fraction=fraction)
    level = {
        "nodes": nodes,
        "rounds_asked": rounds,
        "fraction_train": fraction,
        "broken": None,
        "mem_available_before_gib": round(psutil.virtual_memory().available / GIB, 2),
    }
    sampler = Sampler(tag, min_free)
    cpu_at_submission = None
    started = time.monotonic()
    deadline = started + timeout
    try:
        sampler.start()
        runtime = {"runtime": "onnx", "onnx_model_dir": onnx_model_dir} if onnx_model_dir else {}
        with LocalDeployment(
            DeploymentConfig(data_dirs=data_dirs, workdir=workdir / "deployment", **runtime)
        ) as deployment:
            try:
                deployment.wait_for_supernodes(timeout=max(120.0, min(timeout / 2, 6.0 * nodes)))
            except LoraXSError as err:
                level["broken"] = f"registration: {err}"
                raise  # the processes stop; what was sampled and logged is still kept below
            level["seconds_until_all_online"] = round(time.monotonic() - started, 1)
            sampler.sample()  # idle: N nodes connected, polling, no run yet
            idle_from, idle_started = sampler.cpu_by_role().get("flower-superlink", 0.0), time.monotonic()
            time.sleep(IDLE_WINDOW_S)
            sampler.sample()
            idle_available = psutil.virtual_memory().available
            level["idle"] = sampler.idle_snapshot(nodes)
            level["idle"]["mem_available_drop_mib_per_node"] = round(
                (level["mem_available_before_gib"] * GIB - idle_available) / nodes / 2**20, 1
            )
            level["mem_available_idle_gib"] = round(idle_available / GIB, 2)
            cpu_at_submission = sampler.cpu_by_role()
            level["superlink_idle_cores"] = round(
                (cpu_at_submission.get("flower-superlink", 0.0) - idle_from) / (time.monotonic() - idle_started), 4
            )
            with open(workdir / "flwr-run.log", "ab") as log:
                submitted = time.monotonic()
                flwr_run = subprocess.Popen(
                    deployment.flwr_run_command(".", config),
                    env=deployment.cli_env(),
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                try:
                    while flwr_run.poll() is None:
                        if sampler.over_memory.is_set():
                            guard = sampler.result.memory_guard or {}
                            level["broken"] = (
                                f"memory: MemAvailable fell under {min_free / GIB:.1f} GiB with "
                                f"{guard.get('clientapps_alive', '?')} flwr-clientapp alive "
                                f"({guard.get('clientapp_rss_mib', 0):,.0f} MiB RSS), "
                                f"{time.monotonic() - submitted:.0f} s into the run "
                                "(stopped before the OOM killer)"
                            )
                            break
                        if time.monotonic() > deadline:
                            level["broken"] = f"timeout: the run did not finish within {timeout:.0f} s"
                            break
                        deployment.check_running()
                        time.sleep(0.5)
                finally:
                    if flwr_run.poll() is None:
                        flwr_run.terminate()
                        try:
                            flwr_run.wait(10)
                        except subprocess.TimeoutExpired:
                            flwr_run.kill()
                            flwr_run.wait()
            level["run_seconds"] = round(time.monotonic() - submitted, 1)
            if level["broken"] is None and flwr_run.returncode != 0:
                level["broken"] = f"flwr run exited with {flwr_run.returncode}"
    except LoraXSError as err:
        level["broken"] = level["broken"] or f"deployment: {err}"
    finally:
        samples = sampler.stop()
        level["leftover_processes"] = reap(tag)
        del os.environ[TAG_VARIABLE]
    level.update(summarize_samples(samples))
    if cpu_at_submission is not None:  # the run alone, without start-up and registration
        run_cpu = {role: samples.cpu_s.get(role, 0.0) - cpu_at_submission.get(role, 0.0) for role in SUPERLINK_TREE}
        level["superlink_run_cpu_s"] = round(run_cpu["flower-superlink"], 2)
        level["superlink_tree_run_cpu_s"] = round(sum(run_cpu.values()), 2)
    report = out_dir / "report.json"
    if report.is_file():
        level.update(from_report(json.loads(report.read_text())))
    if level["broken"] is None and level.get("rounds_completed", 0) < rounds:
        level["broken"] = (
            f"only {level.get('rounds_completed', 0)} of {rounds} rounds completed"
            if report.is_file()
            else "the ServerApp wrote no report (it stopped before the end)"
        )
    run_log = log_tail(workdir / "flwr-run.log", lines=2000)
    level["last_round_started"] = last_round_started(run_log)
    if level[
        "broken"
    ]:  # the why, before the temporary folder goes (and without its path: a result names no machine folder)
        level["broken"] = level["broken"].replace(str(workdir), "...")
        named = {f"supernode-{i}.log" for i in re.findall(r"supernode-(\d+)", level["broken"])}  # one that exited
        tails = {name: log_tail(workdir / "deployment" / name) for name in {"superlink.log", "supernode-0.log", *named}}
        tails["flwr-run.log"] = run_log[-40:]
        level["log_tails"] = tails
        level["broken_why"] = break_reason(tails)
        level["log_errors"] = error_summary(
            {path.name: log_tail(path, lines=100_000) for path in sorted((workdir / "deployment").glob("*.log"))}
        )
    return level


def log_tail(path: Path, lines: int = 40) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def reap(tag: str) -> int:
    """Kills whatever of ours outlived the deployment's own stop (there should be nothing)."""
    deadline = time.monotonic() + 20
    while (left := tagged_pids(tag)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    return len(left)


def summarize_samples(samples: Samples) -> dict:
    tree_cpu = sum(samples.cpu_s.get(role, 0.0) for role in SUPERLINK_TREE)
    tree_rss = sum(samples.peak_rss.get(role, 0) for role in SUPERLINK_TREE)
    return {
        "superlink_cpu_s": samples.cpu_s.get("flower-superlink", 0.0),
        "superlink_tree_cpu_s": round(tree_cpu, 2),
        "superlink_peak_rss_mib": round(samples.peak_rss.get("flower-superlink", 0) / 2**20, 1),
        "superlink_tree_peak_rss_mib": round(tree_rss / 2**20, 1),
        "cpu_s_by_role": samples.cpu_s,
        "peak_rss_mib_by_role": {role: round(v / 2**20, 1) for role, v in samples.peak_rss.items()},
        "peak_clientapps_alive": samples.peak_clientapps,
        "clientapp_peak_rss_mib_each": round(samples.peak_process_rss.get("flwr-clientapp", 0) / 2**20, 1),
        "peak_process_rss_mib_by_role": {role: round(v / 2**20, 1) for role, v in samples.peak_process_rss.items()},
        "memory_guard": samples.memory_guard,
        "peak_rss_everything_mib": round(samples.peak_everything_rss / 2**20, 1),
        "min_mem_available_gib": round(samples.min_available / GIB, 2),
        "samples": samples.samples,
    }


def from_report(report: dict) -> dict:
    """The level's numbers from the ServerApp's report.json; a round counts as completed when the
    ServerApp timed it (its list holds every round asked for, run or not)."""
    rounds = report.get("rounds", [])
    seconds = [r["seconds"] for r in rounds if r.get("seconds") is not None]
    return {
        "rounds_completed": len(seconds),
        "round_seconds": seconds,
        "round_seconds_median": statistics.median(seconds) if seconds else None,
        "clients_trained": [r["clients_trained"] for r in rounds],
        "failures": [r.get("failures", {}) for r in rounds],
        "bytes_up_per_round": [r["bytes_up"] for r in rounds],
        "bytes_down_per_round": [r["bytes_down"] for r in rounds],
        "basis_bytes_down_per_round": [r["basis_bytes_down"] for r in rounds],
        "bytes_up_per_client_per_round": report["final"].get("bytes_up_per_client_per_round"),
        "bytes_down_per_client_per_round": report["final"].get("bytes_down_per_client_per_round"),
        "server_wall_seconds": report["final"].get("wall_seconds"),
    }


def stop_on_sigterm(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds through LocalDeployment.__exit__ and the reaping


def write_results(
    levels: list[dict], args: argparse.Namespace, argv: list[str] | None, started: float, machine: dict
) -> str:
    """`machine`: `machine_now()` at the start of the run (the date and the load average before)."""
    meta = {
        "date": machine["date"],
        "machine": platform.processor() or platform.machine(),
        "cpus": machine["cores"],
        "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
        "load_average_before": machine["load_average_before"],
        "load_average_after": load_average(),
        "model": (
            "tiny seeded BERT (simulations/tiny_models.py), rank 4"
            if args.model == "tiny"
            else "sentence-transformers/all-MiniLM-L6-v2, rank 16"
        )
        + (", every SuperNode on onnxruntime (node config runtime = onnx)" if args.runtime == "onnx" else ""),
        "examples": args.examples,
        "rounds": args.rounds,
        "fraction": args.fraction,
        "command": command_line("benchmarks.deployment_load", argv),
        "wall_s": round(time.time() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:  # runs with another fraction stay in the file, side by side
        previous = json.loads(out.with_suffix(".json").read_text())
    except (OSError, ValueError):
        previous = None
    runs = merged_runs(previous, {"meta": meta, "levels": levels})
    out.with_suffix(".json").write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    table = markdown(runs)
    out.with_suffix(".md").write_text(table)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deployment_load", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 25, 50], help="SuperNodes per level")
    parser.add_argument("--rounds", type=int, default=3, help="federated rounds per level")
    parser.add_argument(
        "--fraction",
        type=float,
        default=1.0,
        help="fraction-train: the share of the nodes sampled to train each round (1.0 = all)",
    )
    parser.add_argument("--model", choices=("tiny", "minilm"), default="tiny")
    parser.add_argument(
        "--runtime",
        choices=("torch", "onnx"),
        default="torch",
        help="what the SuperNodes train with (onnx: node config runtime = onnx, artifacts exported once)",
    )
    parser.add_argument("--examples", type=int, default=20, help="synthetic reviews per node (80%% train)")
    parser.add_argument("--level-timeout", type=float, default=900.0, help="seconds a level may take")
    parser.add_argument(
        "--min-free-gib", type=float, default=4.0, help="stop a level when the machine's MemAvailable falls under this"
    )
    parser.add_argument("--out", default=str(RESULTS / "deployment_load"), help="results path without suffix")
    args = parser.parse_args(argv)
    if min(args.nodes) < 1 or args.rounds < 1:
        raise SystemExit("--nodes and --rounds must be positive")
    if not 0.0 < args.fraction <= 1.0:
        raise SystemExit(f"--fraction must be in (0, 1], got {args.fraction}")
    os.environ["HF_HUB_OFFLINE"] = "1"
    signal.signal(signal.SIGTERM, stop_on_sigterm)  # `timeout` ends us: stop every process first
    levels: list[dict] = []
    broke_at = None
    started = time.time()
    machine = machine_now(with_torch=False)  # this process stays without torch: the nodes' processes are measured
    artifacts = tempfile.TemporaryDirectory(prefix="loraxs-load-onnx-")
    onnx_model_dir = training_artifacts(args.model, Path(artifacts.name)) if args.runtime == "onnx" else None
    for nodes in sorted(args.nodes):
        if broke_at is not None:
            levels.append({"nodes": nodes, "skipped": f"{broke_at} nodes already broke", "broken": None})
            continue
        print(f"level: {nodes} SuperNodes, {args.rounds} rounds, fraction-train {args.fraction} ...", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"loraxs-load-{nodes}-") as tmp:
            level = run_level(
                nodes,
                args.rounds,
                args.model,
                args.examples,
                args.level_timeout,
                int(args.min_free_gib * GIB),
                Path(tmp),
                args.fraction,
                onnx_model_dir,
            )
        levels.append(level)
        print(json.dumps({k: v for k, v in level.items() if not isinstance(v, (list, dict))}), flush=True)
        write_results(levels, args, argv, started, machine)  # after every level: a later one may not end
        if level["broken"]:
            broke_at = nodes
    print(write_results(levels, args, argv, started, machine))
    for path in _TINY:
        shutil.rmtree(path.parent, ignore_errors=True)
    artifacts.cleanup()
    leftovers = sum(lv.get("leftover_processes", 0) for lv in levels)
    if leftovers:
        print(f"error: {leftovers} process(es) outlived their level (killed)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
