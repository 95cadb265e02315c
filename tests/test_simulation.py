"""`flower-simulation`: bad input fails fast with one line; a real Ray run (5 clients, tiny
model) writes every artifact and leaves no process behind."""

import csv
import json
import shutil
import sys

import pytest

from shared.artifacts.adapter_file import load_adapter
from shared.artifacts.basis_file import load_basis
from shared.data.rotten_tomatoes import REVIEWS_FILE
from simulations.cli import main
from tests.helpers import one_error_line, tagged_run, write_word_reviews


@pytest.fixture(scope="module")
def reviews_dir(tmp_path_factory):
    return str(write_word_reviews(tmp_path_factory.mktemp("reviews"), 150))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--fraction", "0"], "train fraction must be in (0, 1]"),
        (["--fraction", "1.5"], "train fraction must be in (0, 1]"),
        (["--dataset", "no-such-dataset"], "unknown dataset 'no-such-dataset'"),
        (["--model", "/no/such/model"], "model folder '/no/such/model' does not exist"),
        (["--run-config", "no-such-key=1"], "unknown run-config key(s): no-such-key"),
        (["--rounds", "0"], "num-server-rounds must be at least 1"),
        (["--run-config", "dataset='unbalanced"], "No closing quotation"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_code_1(flags, message, capsys, tmp_path):
    assert main(flags + ["--out", str(tmp_path / "out"), "--no-progress"]) == 1
    assert message in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_more_clients_than_examples_allow_is_refused(reviews_dir, tiny_bert_dir, capsys, tmp_path):
    code = main(
        [
            "--dataset",
            reviews_dir,
            "--model",
            tiny_bert_dir,
            "--partition",
            "iid",
            "--num-clients",
            "100",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    assert code == 1
    assert "--num-clients 100 is too many for 150 examples" in one_error_line(capsys)


def test_more_clients_than_natural_partitions_is_refused(tiny_bert_dir, capsys, tmp_path, monkeypatch):
    """rotten-tomatoes from a cache holding three movies' reviews (no download: a fast test)."""
    monkeypatch.setenv("LORAXS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    rows = [
        {"text": f"review {i}", "label": ["rotten", "fresh"][i % 2], "movie_name": f"movie {i % 3}"} for i in range(30)
    ]
    with open(tmp_path / "cache" / REVIEWS_FILE, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=["text", "label", "movie_name"])
        writer.writeheader()
        writer.writerows(rows)
    code = main(["--num-clients", "4", "--model", tiny_bert_dir, "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 1
    assert "larger than the 3 natural partitions" in one_error_line(capsys)


@pytest.mark.slow
def test_ray_simulation_with_five_clients_writes_every_artifact(reviews_dir, tiny_bert_dir, tmp_path):
    """The real command in a child process: Ray workers, bound config, then a clean exit."""
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "simulations.cli",
        "--num-clients",
        "5",
        "--rounds",
        "2",
        "--fraction",
        "0.6",
        "--partition",
        "iid",
        "--dataset",
        reviews_dir,
        "--model",
        tiny_bert_dir,
        "--rank",
        "4",
        "--personalize",
        "finetune",
        "--scenario",
        "concept-shift",
        "--out",
        str(out),
        "--run-config",
        "final-eval-fraction=1.0 lr=0.01 head-lr=0.01 batch-size=8",
    ]
    done = tagged_run(command, timeout=600)  # also: no process left behind
    assert done.returncode == 0, done.stderr[-3000:]
    assert "final: accuracy (global)" in done.stdout

    report = json.loads((out / "report.json").read_text())
    assert report["config"]["num-clients"] == 5 and report["config"]["scenario"] == "concept-shift"
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert [r["clients_trained"] for r in report["rounds"]] == [3, 3]
    final = report["final"]
    # basis-delivery derive in Ray workers: each node derives the factors or, where its SVD differs
    # from the server's, is shipped them once (tests/test_basis_recipe.py)
    assert final["factors_derived"] + final["factors_shipped"] == final["clients_reached"] == 5
    assert final["max_bases_per_client"] <= 1
    assert final["clients_shifted"] == 1 and final["clients_unshifted"] == 4
    for key in (
        "accuracy_global",
        "accuracy_personalized",
        "accuracy_global_shifted",
        "accuracy_personalized_shifted",
        "wall_seconds",
    ):
        assert final[key] is not None, key
    assert 0 < final["bytes_up_per_client_per_round"] - final["adapter_payload_bytes"] < 4096
    for name in ("report.md", "accuracy_per_round.png", "bytes_per_round.png"):
        assert (out / name).stat().st_size > 0
    basis, _ = load_basis(out / "basis.safetensors")
    _, meta = load_adapter(out / "global_adapter.safetensors")
    assert meta.basis_fingerprint == basis.fingerprint and meta.extra["round"] == "2"


@pytest.mark.slow
def test_the_real_command_on_minilm_with_few_clients(rotten_tomatoes, tmp_path):
    """`flower-simulation` on the packaged MiniLM and rotten-tomatoes (natural partition):
    100 clients, 2 rounds of 3; the default adapter's upload fits 32 KiB, factors go once."""
    out = tmp_path / "run"
    command = shutil.which("flower-simulation")
    command = [command] if command else [sys.executable, "-m", "simulations.cli"]
    command += [
        "--num-clients",
        "100",
        "--rounds",
        "2",
        "--fraction",
        "0.03",
        "--out",
        str(out),
        "--no-progress",
        "--run-config",
        "eval-max-examples=96 final-eval-fraction=0.03",
    ]
    done = tagged_run(command, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    final = report["final"]
    assert report["config"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert [r["clients_trained"] for r in report["rounds"]] == [3, 3]
    assert final["adapter_payload_bytes"] == 24 * 16 * 16 * 4 + 770 * 4
    assert final["bytes_up_per_client_per_round"] <= 32 * 1024
    assert final["max_bases_per_client"] <= 1  # derived by each client, or shipped once where that fails
    assert final["factors_derived"] + final["factors_shipped"] == final["clients_reached"]
    assert final["basis_bytes_down_total"] == final["factors_shipped"] * (final["basis_bytes_per_client"] or 0)
    assert 0.3 < final["accuracy_global"] < 1.0
