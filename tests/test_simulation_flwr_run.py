"""`flwr run . <connection>` runs the same ServerApp/ClientApp from pyproject's run config, on a
local simulation SuperLink this test starts (private FLWR_HOME) and stops again."""

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from deployment.process_tree import flower_command, flower_env
from tests.helpers import processes_tagged, write_word_reviews

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on port {port}")


@pytest.mark.slow
def test_flwr_run_on_a_local_simulation_superlink(tiny_bert_dir, tmp_path):
    data = write_word_reviews(tmp_path / "reviews", 150)
    home = tmp_path / "flwr-home"
    home.mkdir()
    http_port, control_port = free_port(), free_port()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "sim"\n\n'
        f'[superlink.sim]\naddress = "127.0.0.1:{http_port}"\ninsecure = true\n\n'
        "[superlink.sim.options]\nnum-supernodes = 5\n"
    )
    tag = uuid.uuid4().hex  # inherited by everything the SuperLink starts
    # this environment's bin/ first on PATH (CI runs .venv/bin/python without activating it)
    env = {**flower_env(home), "LORAXS_TEST_RUN": tag, "HF_HUB_OFFLINE": "1"}
    superlink = subprocess.Popen(
        [
            flower_command("flower-superlink"),
            "--insecure",
            "--simulation",
            "--isolation",
            "subprocess",
            "--control-api-address",
            f"127.0.0.1:{control_port}",
            "--host",
            "127.0.0.1",
            "--port",
            str(http_port),
            "--disable-runtime-dependency-installation",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    out = tmp_path / "run"
    run_config = (
        f"num-clients=5 num-server-rounds=2 fraction-train=0.6 partition='iid' "
        f"dataset='{data}' model='{tiny_bert_dir}' rank=4 lora-alpha=4.0 "
        f"final-eval-fraction=1.0 out-dir='{out}'"
    )
    try:
        wait_for_port(http_port, 60)
        done = subprocess.run(
            [flower_command("flwr"), "run", ".", "sim", "--stream", "--run-config", run_config],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        deadline = time.monotonic() + 120  # the report is written as the ServerApp ends
        while not (out / "report.json").is_file() and time.monotonic() < deadline:
            time.sleep(1)
        report = json.loads((out / "report.json").read_text())
    finally:
        os.killpg(superlink.pid, signal.SIGTERM)  # the SuperLink and everything it started
        try:
            superlink.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(superlink.pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while (left := processes_tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes outlived the test: {left}"
    assert report["config"]["num-clients"] == 5 and report["config"]["rank"] == 4
    assert [r["clients_trained"] for r in report["rounds"]] == [3, 3]
    final = report["final"]  # each node derived the factors, or was shipped them once
    assert final["factors_derived"] + final["factors_shipped"] == final["clients_reached"] == 5
    assert final["max_bases_per_client"] <= 1
    assert (out / "global_adapter.safetensors").is_file() and (out / "basis.safetensors").is_file()
    assert not list(ROOT.glob("*.fab"))
