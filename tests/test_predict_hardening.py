"""`client.predict` reads nothing it trusts: the description, the ONNX files, the tokenizer, the
`.onnx_adapter` and --input may each be edited, truncated or replaced by a pipe or a device.
Each case is one line on stderr and exit 1 (argparse's 2 for malformed flags), never a
traceback, a hang or an exit 0 with wrong output. And `client.export` never records a
max_length the model cannot run."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.onnx.description import check_description
from client.predict import main as predict_main
from shared.errors import LoraXSError
from tests.helpers import export_cli, make_adapter, within

LONG_TEXT = " ".join(["word"] * 2000)


@pytest.fixture(scope="module")
def export(tiny_bert_dir, tmp_path_factory):
    """One export with every graph, asked for a max_length far beyond the model's 128 positions."""
    folder = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORAXS_CACHE", str(tmp_path_factory.mktemp("cache")))
        adapter = make_adapter(tiny_bert_dir, "seq-cls", folder / "alice.safetensors")
        code, out, err = export_cli(
            [
                "--adapter",
                adapter,
                "--model",
                tiny_bert_dir,
                "--out",
                folder / "model.onnx",
                "--onnx-adapter",
                "--quantize",
                "int8",
                "--max-length",
                100000,
                "--repeats",
                1,
            ]
        )
    assert code == 0, err
    return {"folder": folder, "stderr": err, "description": json.loads((folder / "model.export.json").read_text())}


def predict(capsys, *argv) -> tuple[int, list[str], str]:
    code = predict_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def one_line_refusal(capsys, message: str, *argv) -> None:
    code, lines, err = predict(capsys, *argv)
    assert code == 1 and lines == [], (code, lines, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("client.predict: error: "), err
    assert message in err, err


def edited(export, tmp_path: Path, change=None, **files: bytes | None) -> Path:
    """A copy of the export folder with its description changed by `change` and files replaced."""
    folder = tmp_path / "copy"
    shutil.copytree(export["folder"], folder)
    if change is not None:
        description = json.loads(json.dumps(export["description"]))
        change(description)
        (folder / "model.export.json").write_text(json.dumps(description))
    for name, content in files.items():
        path = folder / name.replace("__", ".")
        path.unlink()
        if content is not None:
            path.write_bytes(content)
    return folder


# -- client.export: max_length within the model's positions --------------------------------------


def test_export_clamps_max_length_to_the_positions_and_says_so(export, capsys):
    description = export["description"]
    assert description["max_positions"] == 128 and description["max_length"] == 128
    assert "--max-length 100000 is more than the model's 128 positions: recording 128" in export["stderr"]
    code, lines, err = predict(capsys, "--model-dir", export["folder"], LONG_TEXT, "a short one")
    assert code == 0, err
    assert [line.split("\t")[2] for line in lines] == [LONG_TEXT, "a short one"]


def test_the_adapter_graph_runs_a_long_text_too(export, capsys):
    code, lines, err = predict(
        capsys, "--model-dir", export["folder"], "--adapter", export["folder"] / "alice.onnx_adapter", LONG_TEXT
    )
    assert code == 0 and len(lines) == 1, err


# -- the description ----------------------------------------------------------------------------


def _set(key, value):
    return lambda d: d.__setitem__(key, value)


@pytest.mark.parametrize(
    "change, message",
    [
        (_set("labels", ["only"]), "'labels' must be a list of 2"),
        (_set("labels", ["a", "b", "c"]), "gives 2 logits, but the description names 3 labels"),
        (_set("labels", ["a", "a"]), "names a class twice"),
        (_set("labels", "ab"), "'labels' must be a list"),
        (_set("max_length", -1), "'max_length' must be an integer in [2, the model's 128 positions]"),
        (_set("max_length", 0), "'max_length' must be an integer"),
        (_set("max_length", 10**12), "'max_length' must be an integer"),
        (_set("max_length", 129), "'max_length' must be an integer in [2, the model's 128 positions]"),
        (_set("max_length", "64"), "'max_length' must be an integer"),
        (_set("max_length", True), "'max_length' must be an integer"),
        (_set("max_positions", 10**9), "'max_positions' must be an integer"),
        (_set("inputs", {"input_ids": [], "pixels": []}), "'inputs' must name input_ids and only these"),
        (_set("inputs", {"input_ids": []}), "takes the inputs attention_mask, input_ids, token_type_ids"),
        (_set("output", {"name": "scores"}), "has no output 'scores'"),
        (lambda d: d["models"].__setitem__("fp32", "../model.onnx"), "must be a plain file name inside the folder"),
        (lambda d: d["models"].__setitem__("fp32", "/etc/passwd"), "must be a plain file name inside the folder"),
        (lambda d: d["models"].__setitem__("fp32", "sub/model.onnx"), "must be a plain file name inside the folder"),
        (lambda d: d["models"].__setitem__("fp32", ".."), "must be a plain file name inside the folder"),
        (lambda d: d["models"].__setitem__("gpu", "model.onnx"), "names an unknown kind"),
        (_set("models", []), "'models' must map model kinds"),
        (_set("task", "causal-lm"), "client.predict classifies"),
        (_set("format", "other"), "not a client.export description"),
    ],
)
def test_an_edited_description_is_one_line(export, tmp_path, capsys, change, message):
    one_line_refusal(capsys, message, "--model-dir", edited(export, tmp_path, change), "hello")


def test_a_description_that_is_not_json_or_too_big_is_one_line(export, tmp_path, capsys):
    folder = edited(export, tmp_path)
    (folder / "model.export.json").write_text("[" * 100_000)
    one_line_refusal(capsys, "cannot read", "--model-dir", folder, "hi")
    (folder / "model.export.json").write_bytes(b" " * (2 * 2**20))
    one_line_refusal(capsys, "more than the 1 MiB allowed", "--model-dir", folder, "hi")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_any_mutation_of_the_description_passes_the_schema_or_is_one_line(export, data):
    description = json.loads(json.dumps(export["description"]))
    key = data.draw(st.sampled_from(sorted(description)))
    values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=8,
    )
    description[key] = data.draw(values)
    try:
        checked = check_description(description, "d")
    except LoraXSError as err:
        assert "\n" not in str(err)
        return
    assert checked is description


# -- the files it names -------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"\x08\x07 truncated", os.urandom(4096)], ids=["empty", "short", "random"])
def test_a_broken_model_file_is_one_line(export, tmp_path, capsys, content):
    one_line_refusal(
        capsys, "cannot load the model", "--model-dir", edited(export, tmp_path, model__onnx=content), "hi"
    )


def test_a_truncated_real_model_is_one_line(export, tmp_path, capsys):
    whole = (export["folder"] / "model.onnx").read_bytes()
    folder = edited(export, tmp_path, model__onnx=whole[: len(whole) // 2])
    one_line_refusal(capsys, "cannot load the model", "--model-dir", folder, "hi")


def test_an_int8_graph_in_place_of_the_base_graph_is_one_line(export, tmp_path, capsys):
    int8 = (export["folder"] / "model.int8.onnx").read_bytes()
    folder = edited(export, tmp_path, **{"model__adapter-base__onnx": int8})
    one_line_refusal(
        capsys,
        "is not a base graph for adapters",
        "--model-dir",
        folder,
        "--adapter",
        folder / "alice.onnx_adapter",
        "hi",
    )


def test_a_flipped_byte_in_an_onnx_adapter_is_one_line(export, tmp_path, capsys):
    data = bytearray((export["folder"] / "alice.onnx_adapter").read_bytes())
    data[len(data) // 2] ^= 0x01
    folder = edited(export, tmp_path, alice__onnx_adapter=bytes(data))
    one_line_refusal(
        capsys,
        "is corrupt: its bytes do not match its sha256 checksum",
        "--model-dir",
        folder,
        "--adapter",
        folder / "alice.onnx_adapter",
        "hi",
    )
    (folder / "alice.onnx_adapter.sha256").unlink()  # the description's checksum still guards its own adapter
    one_line_refusal(capsys, "is corrupt", "--model-dir", folder, "--adapter", folder / "alice.onnx_adapter", "hi")
    renamed = folder / "bob.onnx_adapter"
    (folder / "alice.onnx_adapter").rename(renamed)
    one_line_refusal(capsys, "has no checksum file", "--model-dir", folder, "--adapter", renamed, "hi")


def test_a_pipe_as_tokenizer_or_model_never_blocks(export, tmp_path, capsys):
    folder = edited(export, tmp_path, tokenizer__json=None)
    os.mkfifo(folder / "tokenizer.json")
    within(20, lambda: one_line_refusal(capsys, "is a named pipe, not a regular file", "--model-dir", folder, "hi"))
    (folder / "model.onnx").unlink()
    os.mkfifo(folder / "model.onnx")
    within(20, lambda: one_line_refusal(capsys, "is a named pipe", "--model-dir", folder, "hi"))


# -- flags and --input ---------------------------------------------------------------------------


@pytest.mark.parametrize("threads", ["-1", "100000", str((os.cpu_count() or 1) + 1)])
def test_threads_are_bounded(export, capsys, threads):
    one_line_refusal(capsys, "--threads must be in [0,", "--model-dir", export["folder"], "--threads", threads, "hi")


def test_input_from_a_pipe_or_a_device_never_blocks(export, tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe")
    within(
        20,
        lambda: one_line_refusal(
            capsys, "is a named pipe", "--model-dir", export["folder"], "--input", tmp_path / "pipe"
        ),
    )
    within(20, lambda: one_line_refusal(capsys, "is a device", "--model-dir", export["folder"], "--input", "/dev/zero"))


def test_endless_stdin_stops_at_its_cap(export, capsys, monkeypatch):
    with open("/dev/zero", "rb") as zeros:
        monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": zeros})())
        within(
            30,
            lambda: one_line_refusal(
                capsys, "stdin:1: a line longer than 1 MiB", "--model-dir", export["folder"], "--input", "-"
            ),
        )


def test_input_is_classified_as_it_streams(export, tmp_path, capsys):
    texts = [f"text number {i}" for i in range(70)]  # three batches
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n\n")
    code, lines, err = predict(capsys, "--model-dir", export["folder"], "--input", tmp_path / "in.txt")
    assert code == 0, err
    assert [line.split("\t")[2] for line in lines] == texts


def test_bad_utf8_in_input_names_its_line(export, tmp_path, capsys):
    (tmp_path / "in.txt").write_bytes(b"fine\n\xff\xfe bad\n")
    one_line_refusal(
        capsys, "in.txt:2: not UTF-8 text", "--model-dir", export["folder"], "--input", tmp_path / "in.txt"
    )


@pytest.mark.parametrize("argv", [["--model-dir", ""], ["--adapter", ""], ["--input", ""], ["x", ""]])
def test_empty_flag_values_are_argparse_errors(export, capsys, argv):
    full = argv if argv[0] == "--model-dir" else ["--model-dir", str(export["folder"]), *argv]
    with pytest.raises(SystemExit) as stop:
        predict_main(full if argv[0] != "--model-dir" else [*argv, "hi"])
    assert stop.value.code == 2 and "an empty value is not allowed" in capsys.readouterr().err
