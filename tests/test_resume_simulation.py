"""A real `flower-simulation` killed with SIGKILL after a round's checkpoint, then resumed:
the report's accuracies and the final adapter equal an uninterrupted run with the same seed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from server.checkpoint import CHECKPOINT, Checkpoint
from tests.helpers import tagged_run, write_word_reviews

ROOT = Path(__file__).resolve().parents[1]


def command(reviews, model, out, *extra):
    return [sys.executable, "-m", "simulations.cli", "--num-clients", "4", "--rounds", "3",
            "--fraction", "0.5", "--partition", "iid", "--dataset", str(reviews), "--model", model,
            "--rank", "4", "--out", str(out), "--no-progress",
            "--run-config", "final-eval-fraction=0.0 lr=0.01 head-lr=0.01 batch-size=8 eval-max-examples=32",
            *extra]


@pytest.mark.slow
def test_sigkill_after_round_one_then_resume_equals_an_uninterrupted_run(tiny_bert_dir, tmp_path):
    reviews = write_word_reviews(tmp_path / "reviews", 120)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    whole = tagged_run(command(reviews, tiny_bert_dir, tmp_path / "whole"), timeout=400)
    assert whole.returncode == 0, whole.stderr[-2000:]

    out = tmp_path / "killed"
    child = subprocess.Popen(command(reviews, tiny_bert_dir, out), cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (out / CHECKPOINT).exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(child.pid, signal.SIGKILL)  # the driver and every Ray process it started
    child.wait(30)
    assert Checkpoint(out).round < 3, "killed too late to test a resume"

    resumed = tagged_run(command(reviews, tiny_bert_dir, "", "--resume", str(out)), timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a = json.loads((tmp_path / "whole" / "report.json").read_text())
    b = json.loads((out / "report.json").read_text())
    assert [r["accuracy_global"] for r in b["rounds"]] == [r["accuracy_global"] for r in a["rounds"]]
    assert [r["loss_global"] for r in b["rounds"]] == [r["loss_global"] for r in a["rounds"]]
    first, second = Checkpoint(tmp_path / "whole"), Checkpoint(out)
    assert first.round == second.round == 3
    for key in first.arrays.keys():
        assert np.array_equal(first.arrays[key].numpy(), second.arrays[key].numpy()), key
