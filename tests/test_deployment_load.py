"""benchmarks/deployment_load.py on the smallest real deployment (slow: a SuperLink and two
SuperNodes as processes): it completes, measures the SuperLink, and leaves no process behind."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.deployment_load import run_config
from benchmarks.deployment_load_report import break_reason, last_round_started, markdown, merged_runs

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_load_benchmark_on_two_supernodes_measures_and_cleans_up(tmp_path):
    out = tmp_path / "load"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.deployment_load",
            "--nodes",
            "2",
            "--rounds",
            "1",
            "--level-timeout",
            "240",
            "--examples",
            "10",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]  # non-zero also if a process was left
    run = json.loads(out.with_suffix(".json").read_text())["runs"][0]
    level = run["levels"][0]
    assert run["meta"]["load_average_before"] >= 0 and run["meta"]["load_average_after"] >= 0  # from result_files
    assert str(tmp_path) not in run["meta"]["command"]  # no machine path in a result
    assert level["broken"] is None and level["leftover_processes"] == 0
    assert level["rounds_completed"] == 1 and level["clients_trained"] == [2]
    assert level["bytes_up_per_round"][0] > 0 and level["bytes_down_per_round"][0] > 0
    assert level["superlink_cpu_s"] > 0 and level["superlink_peak_rss_mib"] > 0
    assert level["peak_clientapps_alive"] >= 1 and level["clientapp_peak_rss_mib_each"] > 0
    assert level["idle"]["by_role"]["flower-supernode"]["processes"] == 2
    assert level["idle"]["node_rss_mib_per_node"] > 0 and level["last_round_started"] == 1
    assert "| 2 |" in out.with_suffix(".md").read_text()


def test_break_reason_prefers_the_exception_of_the_run_log():
    tails = {
        "superlink.log": ["INFO :      [Fleet] pull", "ERROR :     something on the SuperLink"],
        "flwr-run.log": [
            "INFO :      [ROUND 1/3]",
            "Traceback (most recent call last):",
            '  File "server/strategy.py", line 152, in _wait_for_nodes',
            "shared.errors.LoraXSError: only 20 of 25 nodes connected within 300 s",
            "done",
        ],
    }
    assert break_reason(tails) == "flwr-run.log: shared.errors.LoraXSError: only 20 of 25 nodes connected within 300 s"
    assert (
        break_reason(
            {"superlink.log": ["ok", "ERROR :     ServerApp failed", "later"], "flwr-run.log": ["INFO : fine"]}
        )
        == "superlink.log: ERROR :     ServerApp failed"
    )
    assert break_reason({"flwr-run.log": ["INFO : all good"], "superlink.log": []}) is None
    assert break_reason({"flwr-run.log": ["x" * 1000 + "Error: y"]}) is None  # not a line that starts an exception
    assert len(break_reason({"flwr-run.log": ["ValueError: " + "z" * 1000]})) == 300


def test_last_round_started_reads_the_serverapps_round_lines():
    assert last_round_started(["INFO :      [ROUND 1/3]", "x", "INFO :      [ROUND 2/3]", "y"]) == 2
    assert last_round_started(["INFO : Starting", "no rounds"]) is None


def _meta(date: str, fraction: float | None = None) -> dict:
    meta = {
        "date": date,
        "command": f"c-{date}",
        "machine": "x86_64",
        "cpus": 2,
        "memory_gib": 23.5,
        "model": "tiny",
        "examples": 20,
        "rounds": 3,
    }
    return meta if fraction is None else {**meta, "fraction": fraction}


def test_runs_with_another_fraction_stay_side_by_side():
    old = {"meta": _meta("d0"), "levels": [{"nodes": 10, "skipped": "-", "broken": None}]}  # before fractions
    sampled = {"meta": _meta("d1", 0.2), "levels": [{"nodes": 50}]}
    runs = merged_runs(old, sampled)
    assert [r["meta"]["fraction"] for r in runs] == [1.0, 0.2] and runs[0]["levels"][0]["nodes"] == 10
    again = {"meta": _meta("d2", 0.2), "levels": [{"nodes": 75}, {"nodes": 50, "x": 1}]}
    runs = merged_runs({"runs": runs}, again)  # replaces the 50-node level, adds 75
    assert [r["meta"]["date"] for r in runs] == ["d0", "d2"]
    assert runs[1]["levels"] == [
        {"nodes": 50, "x": 1, "measured": {"date": "d2", "command": "c-d2"}},
        {"nodes": 75, "measured": {"date": "d2", "command": "c-d2"}},
    ]
    more = {"meta": _meta("d3", 0.2), "levels": [{"nodes": 100, "skipped": "-", "broken": None}]}
    runs = merged_runs({"runs": runs}, more)  # the earlier levels stay, saying who measured them
    assert [(lv["nodes"], lv["measured"]["date"]) for lv in runs[1]["levels"]] == [(50, "d2"), (75, "d2"), (100, "d3")]
    runs[1]["levels"] = [lv for lv in runs[1]["levels"] if lv["nodes"] == 100] + [
        {**runs[1]["levels"][0], "skipped": "-", "broken": None}
    ]
    page = markdown(runs)
    assert "Levels by command: 100 nodes: `c-d3` (d3); 50 nodes: `c-d2` (d2)." in page
    assert "Command: `c-d0`." in page
    assert merged_runs(None, more)[0]["levels"] == [
        {**more["levels"][0], "measured": {"date": "d3", "command": "c-d3"}}
    ]
    assert len(merged_runs({"runs": "junk"}, more)) == 1


def test_run_config_samples_the_fraction_and_evaluates_nowhere(tmp_path):
    config = dict(
        item.split("=", 1) for item in run_config(50, 3, "minilm", tmp_path, round_timeout=900, fraction=0.2).split()
    )
    assert config["fraction-train"] == "0.2" and config["num-clients"] == "50"
    assert config["fraction-evaluate"] == "0.0" and config["final-eval-fraction"] == "0.0"
    assert run_config(5, 1, "minilm", tmp_path, round_timeout=60).split()[2] == "fraction-train=1.0"


def test_a_level_broken_at_registration_still_renders():
    level = {
        "nodes": 75,
        "broken": "registration: supernode-3 exited with code 1",
        "mem_available_before_gib": 22.67,
        "leftover_processes": 0,
        "broken_why": "supernode-3.log: OSError: [Errno 98] address already in use",
    }
    page = markdown([{"meta": _meta("d4", 0.2), "levels": [level]}])
    assert "| 75 | - |" in page and "BROKE: registration: supernode-3 exited with code 1 |" in page
    assert "`supernode-3.log: OSError: [Errno 98] address already in use`" in page
