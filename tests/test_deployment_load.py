"""benchmarks/deployment_load.py on the smallest real deployment (slow: a SuperLink and two
SuperNodes as processes): it completes, measures the SuperLink, and leaves no process behind."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_load_benchmark_on_two_supernodes_measures_and_cleans_up(tmp_path):
    out = tmp_path / "load"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.deployment_load", "--nodes", "2", "--rounds", "1",
         "--level-timeout", "240", "--examples", "10", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=420,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]  # non-zero also if a process was left
    level = json.loads(out.with_suffix(".json").read_text())["levels"][0]
    assert level["broken"] is None and level["leftover_processes"] == 0
    assert level["rounds_completed"] == 1 and level["clients_trained"] == [2]
    assert level["bytes_up_per_round"][0] > 0 and level["bytes_down_per_round"][0] > 0
    assert level["superlink_cpu_s"] > 0 and level["superlink_peak_rss_mib"] > 0
    assert level["peak_clientapps_alive"] >= 1
    assert "| 2 |" in out.with_suffix(".md").read_text()
