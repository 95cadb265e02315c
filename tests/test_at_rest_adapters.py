"""Personal adapters encrypted at rest: `client.run --encrypt-at-rest`, then `client.run --adapter`
and `client.export --adapter` read them; a wrong key or a changed byte is "authentication failed",
exit 1, and nothing is written."""

import pytest

from client.export import main as export_main
from shared.artifacts.adapter_file import load_adapter
from shared.crypto.at_rest import AtRestError, is_encrypted, key_from_file, passphrase_key
from shared.errors import LoraXSError
from tests.helpers import RANK, global_adapter, make_key_file, run_cli, snapshot, write_reviews

PASSPHRASE = "correct horse battery staple"
GLOBAL = "loraxs-adapter/global"  # the authenticated kind of an encrypted global adapter


@pytest.fixture
def data_dir(tmp_path):
    return write_reviews(tmp_path / "device")


def test_encrypt_at_rest_with_a_passphrase_then_read_back(tiny_bert_dir, data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LORAXS_PASSPHRASE", PASSPHRASE)
    out = tmp_path / "personal.safetensors"
    code, _, err = run_cli(
        capsys,
        "--data",
        data_dir,
        "--model",
        tiny_bert_dir,
        "--rank",
        RANK,
        "--epochs",
        1,
        "--out",
        out,
        "--encrypt-at-rest",
    )
    assert code == 0, err
    assert is_encrypted(out) and out.stat().st_mode & 0o077 == 0
    assert b"lora_R" not in out.read_bytes() and b"fresh" not in out.read_bytes()  # names and labels hidden too
    with pytest.raises(LoraXSError, match="is encrypted: give --key-file"):
        load_adapter(out)
    state, meta = load_adapter(out, passphrase_key(PASSPHRASE))
    assert meta.extra["kind"] == "personal" and sum(k.endswith("lora_R") for k in state) == 8

    # the encrypted adapter is a valid --adapter for the next local run (same passphrase from env)
    again = tmp_path / "again.safetensors"
    code, _, err = run_cli(
        capsys,
        "--data",
        data_dir,
        "--adapter",
        out,
        "--model",
        tiny_bert_dir,
        "--epochs",
        1,
        "--out",
        again,
        "--encrypt-at-rest",
    )
    assert code == 0, err
    assert is_encrypted(again)
    load_adapter(again, passphrase_key(PASSPHRASE))


@pytest.mark.parametrize("attack", ["wrong passphrase", "flipped byte", "flipped header byte", "truncated"])
def test_wrong_key_or_changed_file_is_authentication_failed_and_nothing_is_overwritten(
    tiny_bert_dir, data_dir, tmp_path, capsys, monkeypatch, attack
):
    key = make_key_file(tmp_path / "adapter.key")
    plain = global_adapter(tiny_bert_dir, tmp_path / "plain.safetensors")
    encrypted = tmp_path / "global.enc.safetensors"
    from shared.crypto.at_rest import write_encrypted

    write_encrypted(encrypted, plain.read_bytes(), key, GLOBAL)
    key_args = ["--key-file", tmp_path / "adapter.key"]
    blob = bytearray(encrypted.read_bytes())
    if attack == "wrong passphrase":
        monkeypatch.setenv("LORAXS_PASSPHRASE", "not it")
        write_encrypted(encrypted, plain.read_bytes(), passphrase_key(PASSPHRASE), GLOBAL)
        key_args = []
    elif attack == "truncated":
        encrypted.write_bytes(bytes(blob[:-7]))
    else:
        blob[len(blob) // 2 if attack == "flipped byte" else 8] ^= 0x01
        encrypted.write_bytes(bytes(blob))
    out = data_dir / "personal_adapter.safetensors"
    out.write_bytes(b"the user's previous adapter")
    before = snapshot(tmp_path)

    code, out_text, err = run_cli(capsys, "--data", data_dir, "--adapter", encrypted, "--force", *key_args)
    assert code == 1 and out_text == ""
    assert err.count("\n") == 1 and "authentication failed" in err or "encrypted-file version" in err
    assert snapshot(tmp_path) == before  # the old personal adapter is still there, byte for byte

    code = export_main(["--adapter", str(encrypted), "--out", str(tmp_path / "m" / "m.onnx"), *map(str, key_args)])
    assert code == 1 and not (tmp_path / "m").exists()
    assert "authentication failed" in capsys.readouterr().err or attack == "flipped header byte"


def test_export_reads_an_encrypted_adapter_with_its_key_file(tiny_bert_dir, tmp_path, capsys):
    key = make_key_file(tmp_path / "adapter.key")
    plain = global_adapter(tiny_bert_dir, tmp_path / "plain.safetensors")
    from shared.crypto.at_rest import write_encrypted

    write_encrypted(tmp_path / "enc.safetensors", plain.read_bytes(), key, GLOBAL)
    out = tmp_path / "onnx" / "m.onnx"
    out.parent.mkdir()
    code = export_main(
        [
            "--adapter",
            str(tmp_path / "enc.safetensors"),
            "--out",
            str(out),
            "--repeats",
            "1",
            "--model",
            tiny_bert_dir,
            "--key-file",
            str(tmp_path / "adapter.key"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert out.is_file()
    code = export_main(["--adapter", str(tmp_path / "enc.safetensors"), "--out", str(tmp_path / "o2" / "m.onnx")])
    assert code == 1 and "needs a key" in capsys.readouterr().err  # no key, no terminal: one clear line
    assert key_from_file(tmp_path / "adapter.key").key == key.key


def test_key_flags_belong_to_local_runs(data_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "--data", data_dir, "--superlink", "127.0.0.1:1", "--encrypt-at-rest")
    assert code == 1 and "only for local personalization" in err
    code, _, err = run_cli(capsys, "--data", data_dir, "--key-file", tmp_path / "nope.key")
    assert code == 1 and "--key-file is only for encrypted adapters" in err
    code, _, err = run_cli(capsys, "--data", data_dir, "--server-key", tmp_path / "server_key.pub")
    assert code == 1 and "--server-key" in err and "--superlink" in err


def test_at_rest_error_is_a_user_error():
    assert issubclass(AtRestError, LoraXSError)


def test_with_a_key_given_a_plaintext_personal_adapter_is_refused(
    tiny_bert_dir, data_dir, tmp_path, capsys, monkeypatch
):
    """A plaintext adapter swapped in for the user's encrypted one does not load silently; a
    plaintext global adapter (what a server ships) still starts an encrypted run."""
    plain_global = global_adapter(tiny_bert_dir, tmp_path / "global.safetensors")
    plain_personal = global_adapter(tiny_bert_dir, tmp_path / "personal.safetensors", extra={"kind": "personal"})
    monkeypatch.setenv("LORAXS_PASSPHRASE", PASSPHRASE)
    code, _, err = run_cli(
        capsys, "--data", data_dir, "--adapter", plain_personal, "--epochs", 1, "--out", tmp_path / "out.safetensors"
    )
    assert code == 1 and "is not encrypted, but a key is given" in err and err.count("\n") == 1
    for adapter in (plain_personal, plain_global):  # the key is for reading: only an encrypted adapter
        code = export_main(["--adapter", str(adapter), "--out", str(tmp_path / "m" / "m.onnx")])
        assert code == 1 and "is not encrypted, but a key is given" in capsys.readouterr().err
    code, _, err = run_cli(
        capsys,
        "--data",
        data_dir,
        "--adapter",
        plain_personal,
        "--epochs",
        1,  # key for the output
        "--model",
        tiny_bert_dir,
        "--out",
        tmp_path / "out.safetensors",
        "--encrypt-at-rest",
    )
    assert code == 1 and "a personal adapter is read only encrypted" in err
    code, _, err = run_cli(
        capsys,
        "--data",
        data_dir,
        "--adapter",
        plain_global,
        "--epochs",
        1,
        "--model",
        tiny_bert_dir,
        "--out",
        tmp_path / "out.safetensors",
        "--encrypt-at-rest",
    )
    assert code == 0, err
    state, meta = load_adapter(tmp_path / "out.safetensors", passphrase_key(PASSPHRASE))
    assert meta.extra["kind"] == "personal"
    from shared.crypto.at_rest import header_kind

    assert header_kind((tmp_path / "out.safetensors").read_bytes()) == "loraxs-adapter/personal"
    (tmp_path / "out.safetensors").rename(tmp_path / "renamed.safetensors")  # swapped or renamed: refused
    with pytest.raises(LoraXSError, match="renamed or swapped"):
        load_adapter(tmp_path / "renamed.safetensors", passphrase_key(PASSPHRASE))


def test_a_key_file_others_can_read_is_refused_by_the_cli(tiny_bert_dir, tmp_path, capsys):
    key = make_key_file(tmp_path / "adapter.key")
    plain = global_adapter(tiny_bert_dir, tmp_path / "plain.safetensors")
    from shared.crypto.at_rest import write_encrypted

    write_encrypted(tmp_path / "enc.safetensors", plain.read_bytes(), key, GLOBAL)
    (tmp_path / "adapter.key").chmod(0o644)
    code = export_main(
        [
            "--adapter",
            str(tmp_path / "enc.safetensors"),
            "--out",
            str(tmp_path / "o" / "m.onnx"),
            "--key-file",
            str(tmp_path / "adapter.key"),
        ]
    )
    assert code == 1 and "accessible by others: chmod 600" in capsys.readouterr().err
