"""`flower-simulation` and Ray: a private local instance unless `--ray-address` asks for a
cluster; an existing cluster is joined and left running; a gone one is one line, quickly."""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from simulations.cli import main
from tests.helpers import one_error_line, processes_tagged, tagged_run, write_word_reviews

RAY = Path(sys.executable).with_name("ray")
CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")  # what a bare `ray.init()` would join


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def tiny_run(tiny_bert_dir: str, reviews_dir: str, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "simulations.cli",
        "--num-clients",
        "2",
        "--rounds",
        "1",
        "--fraction",
        "1.0",
        "--partition",
        "iid",
        "--dataset",
        reviews_dir,
        "--model",
        tiny_bert_dir,
        "--rank",
        "4",
        "--out",
        str(out),
        "--no-progress",
        "--run-config",
        "final-eval-fraction=0.0 batch-size=8",
    ]


@pytest.fixture(scope="module")
def reviews_dir(tmp_path_factory):

    return str(write_word_reviews(tmp_path_factory.mktemp("reviews"), 60))


def test_an_unreachable_ray_address_is_one_line_within_seconds(tiny_bert_dir, reviews_dir, tmp_path, capsys):
    began = time.monotonic()
    code = main(
        [
            "--ray-address",
            f"127.0.0.1:{free_port()}",
            "--num-clients",
            "2",
            "--partition",
            "iid",
            "--dataset",
            reviews_dir,
            "--model",
            tiny_bert_dir,
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    assert code == 1
    assert "no Ray cluster answers at 127.0.0.1:" in one_error_line(capsys)
    assert time.monotonic() - began < 30


@pytest.mark.slow
def test_a_stale_cluster_address_does_not_hang_the_default_run(tiny_bert_dir, reviews_dir, tmp_path, monkeypatch):
    """RAY_ADDRESS naming a port where nothing listens (as a gone head leaves it): the run uses
    its private Ray instance and finishes."""
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    done = tagged_run(tiny_run(tiny_bert_dir, reviews_dir, tmp_path / "run"), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "report.json").exists()


@pytest.mark.slow
def test_the_simulation_attaches_to_a_running_cluster_and_leaves_it_running(tiny_bert_dir, reviews_dir, tmp_path):
    """`ray start --head` on loopback; the simulation runs on it; the head still answers after."""
    port, tag = free_port(), uuid.uuid4().hex
    head_env = {
        **os.environ,
        "LORAXS_TEST_RUN": tag,
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    remembered = CURRENT_CLUSTER.read_bytes() if CURRENT_CLUSTER.exists() else None
    try:
        subprocess.run(
            [
                str(RAY),
                "start",
                "--head",
                "--node-ip-address",
                "127.0.0.1",
                "--port",
                str(port),
                "--num-cpus",
                "2",
                "--include-dashboard",
                "false",
                "--disable-usage-stats",
            ],
            check=True,
            capture_output=True,
            env=head_env,
            timeout=120,
        )
        command = tiny_run(tiny_bert_dir, reviews_dir, tmp_path / "run") + ["--ray-address", f"127.0.0.1:{port}"]
        done = tagged_run(command, timeout=300)  # none of the driver's own processes outlive it
        assert done.returncode == 0, done.stderr[-3000:]
        assert (tmp_path / "run" / "report.json").exists()
        assert answers(port), "the cluster's head stopped with the simulation"
    finally:
        for pid in processes_tagged(tag):  # the cluster this test started, and only that
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if remembered is None:
            CURRENT_CLUSTER.unlink(missing_ok=True)
        else:
            CURRENT_CLUSTER.write_bytes(remembered)
