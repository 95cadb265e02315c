"""The on-device client `python -m client.run`: local personalization and its bad-input errors.

Runs in-process through `main(argv)` with the tiny seeded BERT (rank 4); one case goes through
the real `python -m client.run` entry point in a subprocess.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployment.process_tree import free_port
from shared.artifacts.adapter_file import load_adapter
from shared.artifacts.basis_file import save_basis
from shared.artifacts.cache import STATE_FOLDER, cached_basis_path
from shared.base_models import build_adapted_model
from shared.loraxs.config import LoraXSConfig
from tests.helpers import RANK, global_adapter, run_cli, snapshot, write_reviews

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def data_dir(tmp_path):
    return write_reviews(tmp_path / "device")


# -- local personalization ------------------------------------------------------------------


def test_from_scratch_writes_personal_adapter_and_leaves_data_alone(tiny_bert_dir, data_dir, capsys):
    before = snapshot(data_dir)
    code, out, err = run_cli(capsys, "--data", data_dir, "--model", tiny_bert_dir, "--rank", RANK, "--epochs", 2)
    assert code == 0, err

    out_path = data_dir / "personal_adapter.safetensors"
    state, meta = load_adapter(out_path)
    assert meta.extra["kind"] == "personal"
    assert meta.labels == ("fresh", "rotten") and meta.rank == RANK and meta.task == "seq-cls"
    assert set(state) == {k for k in state if k.endswith("lora_R") or k.startswith(("classifier.", "lexical."))}
    assert sum(k.endswith("lora_R") for k in state) == 8  # 2 layers x 4 targets
    # the factors it was trained on are cached under their fingerprint
    assert cached_basis_path(data_dir / STATE_FOLDER / "basis", meta.basis_fingerprint).is_file()
    # the report: accuracy before and after, size in bytes and where it went
    assert "accuracy before:" in out and "accuracy after:" in out
    assert f"{out_path.stat().st_size} bytes written to {out_path}" in out
    # nothing else in the folder changed
    after = snapshot(data_dir)
    assert {k: v for k, v in after.items() if k in before} == before
    new = set(after) - set(before)
    assert all(k == "personal_adapter.safetensors" or k.startswith(STATE_FOLDER) for k in new)


@pytest.mark.parametrize("blocks", ["1", None])
def test_a_spent_time_budget_writes_the_validated_start_and_says_so(tiny_bert_dir, data_dir, capsys, blocks):
    """A budget already spent before training: no step is taken, the report says it stopped on
    time, and the adapter written is the closed-form start (validated), from every block setting."""
    extra = ["--train-blocks", blocks] if blocks else []
    code, out, err = run_cli(
        capsys, "--data", data_dir, "--model", tiny_bert_dir, "--rank", RANK, "--time-budget", "0.001", *extra
    )
    assert code == 0, err
    assert "stopped on time" in out and "0 steps" in out
    assert "no epoch beat the start" in out
    assert (data_dir / "personal_adapter.safetensors").is_file()


def test_time_budget_must_be_positive(data_dir, capsys):
    code, _, err = run_cli(capsys, "--data", data_dir, "--time-budget", "-3")
    assert code != 0 and "--time-budget" in err and "Traceback" not in err


def test_from_global_adapter_keeps_its_metadata_and_uses_the_cache(tiny_bert_dir, tmp_path, capsys):
    # 40 reviews: a validation split of 6, enough for a trained adapter to beat the given one by
    # the significance a given adapter asks for (with 3, the given one is kept as it was)
    data_dir = write_reviews(tmp_path / "device", n=40)
    start = global_adapter(tiny_bert_dir, tmp_path / "global.safetensors")
    _, start_meta = load_adapter(start)
    out = tmp_path / "mine.safetensors"
    code, _, err = run_cli(capsys, "--data", data_dir, "--adapter", start, "--model", tiny_bert_dir, "--out", out)
    assert code == 0, err
    state, meta = load_adapter(out)
    assert (meta.base_model, meta.rank, meta.alpha, meta.targets, meta.labels, meta.basis_fingerprint) == (
        start_meta.base_model,
        start_meta.rank,
        start_meta.alpha,
        start_meta.targets,
        start_meta.labels,
        start_meta.basis_fingerprint,
    )
    start_state, _ = load_adapter(start)
    assert any(not state[k].equal(start_state[k]) for k in start_state)  # it trained (a lexical part is extra)

    # second run: the factors come from the cache the first run left; --force replaces the output
    code, stdout, err = run_cli(
        capsys, "--data", data_dir, "--adapter", start, "--model", tiny_bert_dir, "--out", out, "--force"
    )
    assert code == 0, err
    assert "factors from the local cache" in stdout


def test_a_read_only_data_folder_caches_the_factors_in_the_user_cache(tiny_bert_dir, tmp_path, monkeypatch, capsys):
    """The state folder cannot be created (a read-only mount; root ignores chmod, so a file
    stands in its way here): the run still succeeds, the factors go to $LORAXS_CACHE."""
    data = write_reviews(tmp_path / "read-only")
    (data / STATE_FOLDER).write_text("not a folder")
    before = snapshot(data)
    monkeypatch.setenv("LORAXS_CACHE", str(tmp_path / "user-cache"))
    out = tmp_path / "mine.safetensors"
    code, _, err = run_cli(
        capsys, "--data", data, "--model", tiny_bert_dir, "--rank", RANK, "--epochs", 1, "--out", out
    )
    assert code == 0, err
    assert f"note: factors not cached in {data / STATE_FOLDER / 'basis'}" in err
    _, meta = load_adapter(out)
    assert cached_basis_path(tmp_path / "user-cache" / "basis", meta.basis_fingerprint).is_file()
    assert snapshot(data) == before


def test_a_smaller_rank_trains_the_top_left_block_of_the_global_adapter(tiny_bert_dir, data_dir, tmp_path, capsys):
    """Mixed ranks on a device: --rank 2 with a rank-4 adapter trains its top-left 2 x 2 blocks
    on the nested factors, with the federation's scale alpha / r (alpha halves with the rank)."""
    start = global_adapter(tiny_bert_dir, tmp_path / "global.safetensors")
    out = tmp_path / "small.safetensors"
    code, _, err = run_cli(
        capsys, "--data", data_dir, "--adapter", start, "--model", tiny_bert_dir, "--rank", 2, "--out", out
    )
    assert code == 0, err
    state, meta = load_adapter(out)
    _, start_meta = load_adapter(start)
    assert meta.rank == 2 and meta.alpha / meta.rank == start_meta.alpha / start_meta.rank
    assert all(tuple(v.shape) == (2, 2) for k, v in state.items() if k.endswith("lora_R"))
    code, _, err = run_cli(
        capsys,
        "--data",
        data_dir,
        "--adapter",
        start,
        "--model",
        tiny_bert_dir,
        "--rank",
        8,
        "--out",
        tmp_path / "big.safetensors",
    )
    assert code == 1 and "cannot exceed it" in err


def test_basis_file_shipped_by_the_server_is_used(tiny_bert_dir, data_dir, tmp_path, capsys):
    start = global_adapter(tiny_bert_dir, tmp_path / "global.safetensors")
    model, basis = build_adapted_model(tiny_bert_dir, "seq-cls", LoraXSConfig(rank=RANK), labels=["fresh", "rotten"])
    save_basis(tmp_path / "basis.safetensors", basis, tiny_bert_dir)
    code, stdout, err = run_cli(
        capsys,
        "--data",
        data_dir,
        "--adapter",
        start,
        "--model",
        tiny_bert_dir,
        "--basis",
        tmp_path / "basis.safetensors",
        "--out",
        tmp_path / "p.safetensors",
    )
    assert code == 0, err
    assert f"factors from basis file {tmp_path / 'basis.safetensors'}" in stdout


def test_text_only_folder_trains_a_causal_lm(tiny_llama_dir, tmp_path, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("\n".join(f"note number {i} about the weather today" for i in range(12)))
    code, _, err = run_cli(capsys, "--data", folder, "--model", tiny_llama_dir, "--rank", RANK, "--max-length", 16)
    assert code == 0, err
    state, meta = load_adapter(folder / "personal_adapter.safetensors")
    assert meta.task == "causal-lm" and meta.labels is None
    assert all(k.endswith("lora_R") for k in state)


# -- bad input: one line on stderr, non-zero exit, no file destroyed ------------------------


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_data_folder(tmp_path, capsys):
    code, _, err = run_cli(capsys, "--data", tmp_path / "nope")
    assert_one_line_error(code, err, "not found", str(tmp_path / "nope"))
    assert not (tmp_path / "nope").exists()


def test_empty_data_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "--data", tmp_path / "empty")
    assert_one_line_error(code, err, "empty")
    assert list((tmp_path / "empty").iterdir()) == []


def test_folder_without_supported_files(tmp_path, capsys):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "readme.md").write_text("# not data\n")
    before = snapshot(folder)
    code, _, err = run_cli(capsys, "--data", folder)
    assert_one_line_error(code, err, "no supported data files")
    assert snapshot(folder) == before


@pytest.mark.parametrize("row, missing", [({"label": "fresh"}, "'text'"), ({"text": "fine"}, "'label'")])
def test_rows_without_text_or_label(tiny_bert_dir, data_dir, capsys, row, missing):
    with open(data_dir / "reviews.jsonl", "a") as out:
        out.write(json.dumps(row) + "\n")
    before = snapshot(data_dir)
    code, _, err = run_cli(capsys, "--data", data_dir, "--model", tiny_bert_dir, "--rank", RANK)
    assert_one_line_error(code, err, "missing " + missing, "reviews.jsonl:21")
    assert snapshot(data_dir) == before


def test_labels_that_do_not_match_the_adapter(tiny_bert_dir, tmp_path, capsys):
    folder = write_reviews(tmp_path / "device", labels=("good", "bad"))
    start = global_adapter(tiny_bert_dir, tmp_path / "global.safetensors")
    before = snapshot(folder)
    code, _, err = run_cli(capsys, "--data", folder, "--adapter", start, "--model", tiny_bert_dir)
    assert_one_line_error(code, err, "bad, good", "fresh, rotten")
    assert snapshot(folder) == before


def test_adapter_for_another_base_model(tiny_bert_dir, tiny_llama_dir, data_dir, tmp_path, capsys):
    start = global_adapter(tiny_bert_dir, tmp_path / "global.safetensors")
    before = snapshot(data_dir)
    code, _, err = run_cli(capsys, "--data", data_dir, "--adapter", start, "--model", tiny_llama_dir)
    assert_one_line_error(code, err, "trained on base model", tiny_llama_dir)
    # a factor bundle of another base model is refused too
    other = tmp_path / "other-bert"
    other.mkdir()
    for f in Path(tiny_bert_dir).iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    _, basis = build_adapted_model(str(other), "seq-cls", LoraXSConfig(rank=RANK), labels=["fresh", "rotten"])
    save_basis(tmp_path / "other-basis.safetensors", basis, str(other))
    code, _, err = run_cli(
        capsys,
        "--data",
        data_dir,
        "--adapter",
        start,
        "--model",
        tiny_bert_dir,
        "--basis",
        tmp_path / "other-basis.safetensors",
    )
    assert_one_line_error(code, err, "holds factors of base model", str(other))
    assert snapshot(data_dir) == before


def test_adapter_for_another_fingerprint(tiny_bert_dir, data_dir, tmp_path, capsys):
    start = global_adapter(tiny_bert_dir, tmp_path / "global.safetensors", basis_fingerprint="ab" * 32)
    before = snapshot(data_dir)
    code, _, err = run_cli(capsys, "--data", data_dir, "--adapter", start, "--model", tiny_bert_dir)
    assert_one_line_error(code, err, "abababababab", "--basis FILE")
    assert snapshot(data_dir) == before
    # the same with a shipped basis file that does not belong to the adapter
    _, basis = build_adapted_model(tiny_bert_dir, "seq-cls", LoraXSConfig(rank=RANK), labels=["fresh", "rotten"])
    save_basis(tmp_path / "basis.safetensors", basis, tiny_bert_dir)
    code, _, err = run_cli(
        capsys,
        "--data",
        data_dir,
        "--adapter",
        start,
        "--model",
        tiny_bert_dir,
        "--basis",
        tmp_path / "basis.safetensors",
    )
    assert_one_line_error(code, err, "abababababab", basis.fingerprint[:12])
    assert snapshot(data_dir) == before


def test_corrupt_adapter_file(data_dir, tmp_path, capsys):
    broken = tmp_path / "global.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    code, _, err = run_cli(capsys, "--data", data_dir, "--adapter", broken)
    assert_one_line_error(code, err, "not a valid adapter file")


def test_existing_output_is_not_overwritten_without_force(data_dir, tmp_path, capsys):
    out = data_dir / "personal_adapter.safetensors"
    out.write_bytes(b"my precious adapter")
    before = snapshot(data_dir)
    code, _, err = run_cli(capsys, "--data", data_dir)
    assert_one_line_error(code, err, "already exists", "--force")
    assert snapshot(data_dir) == before


def test_unreachable_superlink(data_dir, capsys):
    port = free_port()  # nothing listens there
    before = snapshot(data_dir)
    code, _, err = run_cli(capsys, "--data", data_dir, "--superlink", f"127.0.0.1:{port}", "--insecure")
    assert_one_line_error(code, err, f"cannot reach SuperLink at 127.0.0.1:{port}")
    assert snapshot(data_dir) == before


def test_superlink_mode_checks_the_data_folder_first(tmp_path, capsys):
    code, _, err = run_cli(capsys, "--data", tmp_path / "nope", "--superlink", "127.0.0.1:1", "--insecure")
    assert_one_line_error(code, err, "not found")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--superlink", "127.0.0.1:9092", "--epochs", "2"], "--epochs: only for local personalization"),
        (["--insecure"], "--insecure: only for joining a federation"),
        (["--superlink", "no-port"], "--superlink must be HOST:PORT"),
        (["--superlink", "127.0.0.1:1", "--insecure", "--root-certificates", "ca.crt"], "contradict"),
    ],
)
def test_flags_of_the_wrong_mode(data_dir, capsys, argv, fragment):
    code, _, err = run_cli(capsys, "--data", data_dir, *argv)
    assert_one_line_error(code, err, fragment)


def test_real_entry_point_reports_bad_input_in_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "client.run", "--data", str(tmp_path / "nope")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: dataset folder not found: {tmp_path / 'nope'}"
    assert done.stdout == ""
