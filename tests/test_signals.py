"""SIGTERM / SIGINT stop `client.run`, `client.export` and `flower-simulation` cleanly: the
cleanup runs (no staging folder, no half-made output or run folder, no temp file) and the exit
status is 143 / 130, never death by the signal (-15)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.run_folder import CHECKPOINT
from shared.signals import Stopped, signals_deferred, stop_on_signals
from tests.helpers import make_adapter, write_reviews

ROOT = Path(__file__).resolve().parents[1]


def start(*argv, env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-m", *map(str, argv)],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def signal_when(process: subprocess.Popen, ready, sig: int, timeout: float = 180) -> tuple[int, str]:
    """Sends `sig` to `process` once `ready()` is true; -> (exit status, stderr)."""
    deadline = time.monotonic() + timeout
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, f"ended before the signal: {process.communicate()[1][-2000:]}"
    os.kill(process.pid, sig)
    try:
        _, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # our own process group only
        raise
    return process.returncode, err


def test_stop_on_signals_raises_in_the_main_thread_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as stopped, stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    assert stopped.value.exit_code == 143 and signal.getsignal(signal.SIGTERM) == before
    with pytest.raises(Stopped), stop_on_signals():
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            done = True  # still running: the signal waits for the block to end
        time.sleep(1)
    assert done


def test_sigterm_to_client_export_leaves_no_staging_and_no_output_folder(tiny_bert_dir, tmp_path):
    adapter = make_adapter(tiny_bert_dir, "seq-cls", tmp_path / "a.safetensors")
    out = tmp_path / "new" / "deeper"
    process = start(
        "client.export",
        "--adapter",
        adapter,
        "--model",
        tiny_bert_dir,
        "--out",
        out / "m.onnx",
        "--repeats",
        100000,
        env_extra={"LORAXS_CACHE": str(tmp_path / "cache")},
    )
    code, err = signal_when(process, lambda: out.is_dir() and any(out.glob(".export-*")), signal.SIGTERM)
    assert code == 143, err[-2000:]
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert not (tmp_path / "new").exists()  # the folders it made are gone, staging included


def test_sigterm_and_sigint_to_client_run_write_nothing(tiny_bert_dir, tmp_path):
    for sig, status in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        data = write_reviews(tmp_path / f"data-{status}", 200)
        process = start("client.run", "--data", data, "--model", tiny_bert_dir, "--rank", 4, "--epochs", 200)
        code, err = signal_when(process, lambda: (data / ".loraxs").exists(), sig)
        assert code == status, err[-2000:]
        assert "Traceback" not in err
        left = sorted(p.name for p in data.iterdir())
        assert left == [".loraxs", "reviews.jsonl"], left  # no personal adapter, no temp file


@pytest.mark.slow
def test_sigterm_to_flower_simulation_leaves_no_half_made_run_folder(tiny_bert_dir, tmp_path):
    reviews = write_reviews(tmp_path / "reviews", 80)
    out = tmp_path / "run"
    process = start(
        "simulations.cli",
        "--num-clients",
        "2",
        "--rounds",
        "3",
        "--partition",
        "iid",
        "--dataset",
        reviews,
        "--model",
        tiny_bert_dir,
        "--rank",
        "4",
        "--out",
        out,
        "--no-progress",
        "--run-config",
        "final-eval-fraction=0.0 batch-size=8 eval-max-examples=16",
    )
    code, err = signal_when(process, lambda: (out / "basis.safetensors").exists(), signal.SIGTERM, timeout=300)
    assert code == 143, err[-2000:]
    assert "stopped by SIGTERM" in err
    if (out / CHECKPOINT).exists():  # a round finished first: the folder is a resumable run
        assert f"--resume {out}" in err
    else:
        assert not out.exists(), sorted(p.name for p in out.iterdir())
        assert "was removed" in err
    json.dumps(err)  # (stderr is text)
