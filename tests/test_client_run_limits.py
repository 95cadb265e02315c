"""`client.run` on numbers and folders it must refuse: one line, exit 1, nothing written."""

import pytest

from tests.helpers import RANK, run_cli, snapshot, write_reviews


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--seed", "-1", "--seed must be in"),
        ("--seed", str(2**64), "--seed must be in"),
        ("--epochs", "inf", "--epochs must be in"),
        ("--lr", "inf", "--lr must be a positive finite number"),
        ("--lr", "nan", "--lr must be a positive finite number"),
    ],
)
def test_impossible_numbers_are_one_line(tiny_bert_dir, tmp_path, capsys, flag, value, message):
    folder = write_reviews(tmp_path / "device")
    before = snapshot(folder)
    code, _, err = run_cli(capsys, "--data", folder, "--model", tiny_bert_dir, "--rank", RANK, flag, value)
    assert code == 1 and len(err.strip().splitlines()) == 1 and message in err, err
    assert snapshot(folder) == before


def test_a_diverging_learning_rate_stops_and_writes_nothing(tiny_bert_dir, tmp_path, capsys):
    folder = write_reviews(tmp_path / "device")
    code, _, err = run_cli(
        capsys, "--data", folder, "--model", tiny_bert_dir, "--rank", RANK, "--lr", "1e30", "--epochs", "3"
    )
    assert code == 1 and "diverged" in err, err
    assert not (folder / "personal_adapter.safetensors").exists()


def test_text_only_folder_with_an_encoder_model_is_refused(tiny_bert_dir, tmp_path, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("\n".join(f"line number {i} of my notes" for i in range(20)))
    code, _, err = run_cli(capsys, "--data", folder, "--model", tiny_bert_dir, "--rank", RANK)
    assert code == 1 and "encoder" in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
