"""ONNX export (`python -m client.export`): parity with PyTorch on tiny seeded models, the
adapter-as-input graph against per-user merged models, int8, and bad input.

Each tiny export runs once per module (an export takes seconds); the tests read its files and
check them against PyTorch on inputs of their own, with onnxruntime and tokenizers only.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch

from client.onnx.job import ExportConfig
from shared.artifacts.adapter_file import adapter_meta, load_adapter, save_adapter
from shared.artifacts.basis_file import save_basis
from shared.artifacts.cache import store_basis
from shared.base_models import DEFAULT_MODEL, build_adapted_model, load_tokenizer
from shared.errors import LoraXSError
from shared.loraxs.basis import Basis
from shared.loraxs.config import LoraXSConfig
from shared.loraxs.model import adapter_state, load_adapter_state
from tests.helpers import LABELS, TEXTS, TOLERANCE, device_batch, export_cli, make_adapter, printed_diff, session

REPO = Path(__file__).resolve().parents[1]


def reference_model(model_dir: str, task: str, state: dict):
    """PyTorch base + adapter, unmerged: what the ONNX files must reproduce."""
    model, _ = build_adapted_model(model_dir, task, LoraXSConfig(rank=4), labels=LABELS if task == "seq-cls" else None)
    load_adapter_state(model, state)
    return model


def torch_logits(model, batch: dict, task: str) -> np.ndarray:
    kwargs = {k: torch.from_numpy(v) for k, v in batch.items()}
    if task == "causal-lm":
        kwargs["use_cache"] = False
    with torch.no_grad():
        return model(**kwargs).logits.numpy()


def real_token_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    diff = np.abs(a - b)
    return float((diff[mask.astype(bool)] if diff.ndim == 3 else diff).max())


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory):
    """Keep the user's ~/.cache/loraxs out of these tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORAXS_CACHE", str(tmp_path_factory.mktemp("loraxs-cache")))
        yield


@pytest.fixture(scope="module")
def bert_adapter(tiny_bert_dir, tmp_path_factory, private_cache):
    return make_adapter(tiny_bert_dir, "seq-cls", tmp_path_factory.mktemp("bert-adapter") / "personal.safetensors")


@pytest.fixture(scope="module")
def bert_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert-data")
    pairs = [("good", "pos"), ("fine", "pos"), ("great", "pos"), ("bad", "neg"), ("dull", "neg"), ("awful", "neg")]
    rows = [{"text": f"the film was {pairs[i % 6][0]} overall {i}", "label": pairs[i % 6][1]} for i in range(40)]
    (folder / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def bert_export(bert_adapter, bert_data, tiny_bert_dir):
    """One CLI run with every option; --out sits beside the adapter, which must stay untouched."""
    adapter_bytes = bert_adapter.read_bytes()
    code, out, err = export_cli(
        [
            "--adapter",
            bert_adapter,
            "--model",
            tiny_bert_dir,
            "--out",
            bert_adapter.parent / "model.onnx",
            "--quantize",
            "int8",
            "--adapter-as-input",
            "--data",
            bert_data,
            "--timing",
            "--repeats",
            2,
        ]
    )
    assert code == 0, err
    return {"folder": bert_adapter.parent, "stdout": out, "adapter_bytes": adapter_bytes}


@pytest.fixture(scope="module")
def llama_export(tiny_llama_dir, tmp_path_factory, private_cache):
    adapter = make_adapter(
        tiny_llama_dir, "causal-lm", tmp_path_factory.mktemp("llama-adapter") / "personal.safetensors"
    )
    folder = tmp_path_factory.mktemp("llama-export")
    code, out, err = export_cli(
        ["--adapter", adapter, "--model", tiny_llama_dir, "--out", folder / "model.onnx", "--adapter-as-input"]
    )
    assert code == 0, err
    return {"folder": folder, "stdout": out, "adapter": adapter}


# --- sequence classification -------------------------------------------------------------


def test_seq_cls_folder_holds_the_models_tokenizer_and_description(bert_export, bert_adapter, tiny_bert_dir):
    folder = bert_export["folder"]
    for name in (
        "model.onnx",
        "model.int8.onnx",
        "model.adapter-input.onnx",
        "model.export.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ):
        assert (folder / name).is_file(), name
    assert not [p for p in folder.iterdir() if p.name.startswith(".export-") or "check" in p.name]
    assert bert_adapter.read_bytes() == bert_export["adapter_bytes"]
    description = json.loads((folder / "model.export.json").read_text())
    state, _ = load_adapter(bert_adapter)
    assert description["task"] == "seq-cls" and description["labels"] == LABELS
    assert list(description["inputs"]) == ["input_ids", "attention_mask", "token_type_ids"]
    model_order = list(adapter_state(reference_model(tiny_bert_dir, "seq-cls", state)))
    assert list(description["adapter_inputs"]) == model_order
    assert description["adapter_inputs"] == {name: list(state[name].shape) for name in model_order}
    inputs = [i.name for i in session(folder / "model.adapter-input.onnx").get_inputs()]
    assert inputs == list(description["inputs"]) + model_order


def test_seq_cls_onnx_matches_unmerged_pytorch_on_new_shapes(bert_export, bert_adapter, tiny_bert_dir):
    folder = bert_export["folder"]
    state, _ = load_adapter(bert_adapter)
    batch = device_batch(folder, TEXTS)  # (3, T): another batch and length than the trace, padded
    assert batch["attention_mask"].min() == 0
    expected = torch_logits(reference_model(tiny_bert_dir, "seq-cls", state), batch, "seq-cls")
    got = session(folder / "model.onnx").run(["logits"], batch)[0]
    assert got.shape == (3, 2)
    assert np.abs(got - expected).max() <= TOLERANCE
    without_r = {k: torch.zeros_like(v) if k.endswith("lora_R") else v for k, v in state.items()}
    base_logits = torch_logits(reference_model(tiny_bert_dir, "seq-cls", without_r), batch, "seq-cls")
    assert np.abs(base_logits - expected).max() > 1e-2  # the r x r matrices change the outputs
    assert printed_diff(bert_export["stdout"], "onnxruntime fp32 vs PyTorch") <= TOLERANCE


def test_adapter_as_input_matches_each_users_merged_model(bert_export, bert_adapter, tiny_bert_dir):
    folder = bert_export["folder"]
    state_a, _ = load_adapter(bert_adapter)
    generator = torch.Generator().manual_seed(7)
    state_b = {k: torch.randn(v.shape, generator=generator) for k, v in state_a.items()}
    batch = device_batch(folder, TEXTS)
    graph = session(folder / "model.adapter-input.onnx")
    user_a = safetensors.numpy.load_file(bert_adapter)  # as a device reads it: numpy, no torch
    out_a = graph.run(["logits"], {**batch, **user_a})[0]
    out_b = graph.run(["logits"], {**batch, **{k: v.numpy() for k, v in state_b.items()}})[0]
    merged_a = session(folder / "model.onnx").run(["logits"], batch)[0]
    expected_b = torch_logits(reference_model(tiny_bert_dir, "seq-cls", state_b), batch, "seq-cls")
    assert np.abs(out_a - merged_a).max() <= TOLERANCE
    assert np.abs(out_b - expected_b).max() <= TOLERANCE
    assert np.abs(out_a - out_b).max() > 1e-2  # two users really differ
    for user in ("user A", "user B"):
        assert printed_diff(bert_export["stdout"], f"adapter-as-input ({user})") <= TOLERANCE


def test_int8_is_smaller_close_and_reports_accuracy(bert_export):
    import onnx

    folder = bert_export["folder"]
    assert (folder / "model.int8.onnx").stat().st_size < (folder / "model.onnx").stat().st_size
    graph = onnx.load(folder / "model.int8.onnx").graph
    fp32 = onnx.load(folder / "model.onnx").graph
    constant = {t.name for t in fp32.initializer}
    linear = [n for n in fp32.node if n.op_type in ("MatMul", "Gemm") and any(i in constant for i in n.input)]
    weights = {t.name: t for t in graph.initializer}
    int8_matmuls = [n for n in graph.node if n.op_type == "MatMulInteger"]
    assert len(int8_matmuls) == len(linear) - 1 > 0  # every Linear but the head
    for node in int8_matmuls:  # the recipe: int8 weights with one zero point (and scale) per output channel
        weight = weights[node.input[1]]
        assert weight.data_type == onnx.TensorProto.INT8
        assert list(weights[node.input[3]].dims) == [weight.dims[1]]
    head = next(n for n in graph.node if "logits" in n.output)
    assert head.op_type in ("Gemm", "Add", "MatMul")  # fp32, not a quantized op
    embedding = next(n for n in graph.node if n.op_type == "Gather" and "word_embeddings" in n.input[0])
    assert weights[embedding.input[0]].data_type == onnx.TensorProto.FLOAT  # embeddings stay fp32
    batch = device_batch(folder, TEXTS)
    fp32 = session(folder / "model.onnx").run(["logits"], batch)[0]
    int8 = session(folder / "model.int8.onnx").run(["logits"], batch)[0]
    assert np.abs(int8 - fp32).max() < 0.5
    stdout = bert_export["stdout"]
    assert re.search(
        r"accuracy on 8 test examples: fp32 \d\.\d{4}, int8 \d\.\d{4} \(int8 - fp32: [+-]\d\.\d{4}\)", stdout
    )
    for runtime in (
        "PyTorch eager, adapter unmerged",
        "onnxruntime fp32, merged",
        "onnxruntime int8, merged",
        "onnxruntime fp32, adapter as input",
    ):
        assert re.search(rf"\d+\.\d\d ms  {re.escape(runtime)}$", stdout, re.MULTILINE), runtime


def test_graphs_carry_eager_attention_and_the_model_keeps_its_own(bert_export, tiny_bert_dir):
    """sdpa attention exports with a Where + IsNaN per layer: int8 128 -> 111 ms at batch 32 without
    them on MiniLM (client/onnx/graph.py:EXPORT_ATTENTION); the export must not change the model."""
    import onnx

    from client.onnx.graph import attention_implementation

    for name in ("model.onnx", "model.int8.onnx", "model.adapter-input.onnx"):
        ops = {n.op_type for n in onnx.load(bert_export["folder"] / name, load_external_data=False).graph.node}
        assert "Softmax" in ops and "IsNaN" not in ops, name
    model, _ = build_adapted_model(tiny_bert_dir, "seq-cls", LoraXSConfig(rank=4), labels=LABELS)
    before = model.config._attn_implementation
    with attention_implementation(model, "eager"):
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == before != "eager"


# --- causal LM ----------------------------------------------------------------------------


def test_causal_lm_logits_match_pytorch(llama_export, tiny_llama_dir):
    folder = llama_export["folder"]
    state, _ = load_adapter(llama_export["adapter"])
    tokenizer = load_tokenizer(tiny_llama_dir)
    encoded = tokenizer(TEXTS[:2], padding=True, return_tensors="np")
    batch = {name: encoded[name].astype(np.int64) for name in ("input_ids", "attention_mask")}
    expected = torch_logits(reference_model(tiny_llama_dir, "causal-lm", state), batch, "causal-lm")
    got = session(folder / "model.onnx").run(["logits"], batch)[0]
    assert got.shape == expected.shape == (2, batch["input_ids"].shape[1], tokenizer.vocab_size)
    assert real_token_diff(got, expected, batch["attention_mask"]) <= TOLERANCE
    description = json.loads((folder / "model.export.json").read_text())
    assert description["task"] == "causal-lm" and list(description["inputs"]) == ["input_ids", "attention_mask"]

    graph = session(folder / "model.adapter-input.onnx")
    state_b = {k: -v for k, v in state.items()}
    out_b = graph.run(["logits"], {**batch, **{k: v.numpy() for k, v in state_b.items()}})[0]
    expected_b = torch_logits(reference_model(tiny_llama_dir, "causal-lm", state_b), batch, "causal-lm")
    assert real_token_diff(out_b, expected_b, batch["attention_mask"]) <= TOLERANCE
    assert real_token_diff(out_b, got, batch["attention_mask"]) > 1e-2
    assert printed_diff(llama_export["stdout"], "onnxruntime fp32 vs PyTorch") <= TOLERANCE


# --- failures write nothing -----------------------------------------------------------------


def test_parity_failure_exits_non_zero_and_keeps_the_old_files(bert_adapter, tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("client.onnx.job.FP32_TOLERANCE", -1.0)
    (tmp_path / "model.onnx").write_bytes(b"previous export")
    code, _, err = export_cli(
        ["--adapter", bert_adapter, "--model", tiny_bert_dir, "--out", tmp_path / "model.onnx", "--repeats", 1]
    )
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("error: onnxruntime fp32 vs PyTorch")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert (tmp_path / "model.onnx").read_bytes() == b"previous export"


def one_line_error(argv: list, folder: Path) -> str:
    before = sorted(folder.rglob("*"))
    code, out, err = export_cli(argv)
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert sorted(folder.rglob("*")) == before  # nothing written
    return lines[0]


def test_missing_adapter(tmp_path):
    line = one_line_error(["--adapter", tmp_path / "nope.safetensors", "--out", tmp_path / "m.onnx"], tmp_path)
    assert "does not exist" in line


def test_wrong_base_model(bert_adapter, tiny_llama_dir, tmp_path):
    line = one_line_error(
        ["--adapter", bert_adapter, "--out", tmp_path / "m.onnx", "--model", tiny_llama_dir], tmp_path
    )
    assert "was trained on base model" in line


def test_basis_with_another_fingerprint(bert_adapter, tiny_bert_dir, tmp_path):
    state, meta = load_adapter(bert_adapter)
    model, basis = build_adapted_model(meta.base_model, "seq-cls", LoraXSConfig(rank=4), labels=LABELS)
    other = Basis(rank=4, factors={n: (b * 1.001, a) for n, (b, a) in basis.factors.items()})
    save_basis(tmp_path / "other.basis", other, meta.base_model)
    out = tmp_path / "out"
    out.mkdir()
    line = one_line_error(
        [
            "--adapter",
            bert_adapter,
            "--model",
            tiny_bert_dir,
            "--out",
            out / "m.onnx",
            "--basis",
            tmp_path / "other.basis",
        ],
        out,
    )
    assert "belongs to basis" in line and "--basis" in line


def test_adapter_of_another_basis_fails_on_the_fresh_svd(bert_adapter, tiny_bert_dir, tmp_path):
    state, meta = load_adapter(bert_adapter)
    stranger = tmp_path / "stranger.safetensors"
    save_adapter(stranger, state, dataclasses.replace(meta, basis_fingerprint="0" * 64))
    out = tmp_path / "out"
    out.mkdir()
    line = one_line_error(["--adapter", stranger, "--model", tiny_bert_dir, "--out", out / "m.onnx"], out)
    assert "belongs to basis 000000000000" in line


@pytest.mark.parametrize(
    "out, message",
    [
        ("a-file/m.onnx", "a-file is not a folder"),
        ("a-file/deeper/m.onnx", "a-file is not a folder"),
        ("m.txt", "must name an .onnx file"),
        ("folder.onnx", "is a folder"),
    ],
)
def test_unusable_output(bert_adapter, tiny_bert_dir, tmp_path, out, message):
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "folder.onnx").mkdir()
    assert message in one_line_error(
        ["--adapter", bert_adapter, "--model", tiny_bert_dir, "--out", tmp_path / out], tmp_path
    )


def test_unwritable_output_folder(bert_adapter, tiny_bert_dir, tmp_path, monkeypatch):
    def refuse(**_):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("client.onnx.job.tempfile.mkdtemp", refuse)
    line = one_line_error(["--adapter", bert_adapter, "--model", tiny_bert_dir, "--out", tmp_path / "m.onnx"], tmp_path)
    assert f"cannot write to output folder {tmp_path}: Permission denied" in line


def test_a_missing_output_folder_is_created_as_client_run_does(bert_adapter, tiny_bert_dir, tmp_path):
    code, _, err = export_cli(
        [
            "--adapter",
            bert_adapter,
            "--model",
            tiny_bert_dir,
            "--out",
            tmp_path / "new" / "deeper" / "m.onnx",
            "--repeats",
            1,
        ]
    )
    assert code == 0, err
    assert (tmp_path / "new" / "deeper" / "m.onnx").is_file()


def test_a_failed_export_removes_the_folder_it_created(bert_adapter, tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("client.onnx.job.FP32_TOLERANCE", -1.0)
    code, _, _ = export_cli(
        ["--adapter", bert_adapter, "--model", tiny_bert_dir, "--out", tmp_path / "new" / "m.onnx", "--repeats", 1]
    )
    assert code == 1 and list(tmp_path.iterdir()) == []


def test_an_obstacle_at_the_last_name_replaces_nothing(bert_adapter, tiny_bert_dir, tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"previous export")
    (tmp_path / "model.export.json").mkdir()  # the last file moved into place
    code, _, err = export_cli(
        ["--adapter", bert_adapter, "--model", tiny_bert_dir, "--out", tmp_path / "model.onnx", "--repeats", 1]
    )
    assert code == 1 and "is in the way" in err
    assert (tmp_path / "model.onnx").read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.export.json", "model.onnx"]


def test_a_move_failing_halfway_puts_the_old_files_back(bert_adapter, tiny_bert_dir, tmp_path, monkeypatch):
    (tmp_path / "model.onnx").write_bytes(b"previous export")
    (tmp_path / "model.export.json").write_text("previous description")
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == tmp_path / "model.export.json" and ".export-old-" not in str(src):  # staged -> target
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr("client.onnx.folder.os.replace", replace)
    code, _, err = export_cli(
        ["--adapter", bert_adapter, "--model", tiny_bert_dir, "--out", tmp_path / "model.onnx", "--repeats", 1]
    )
    assert code == 1 and "the folder was left as it was" in err
    assert (tmp_path / "model.onnx").read_bytes() == b"previous export"
    assert (tmp_path / "model.export.json").read_text() == "previous description"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.export.json", "model.onnx"]


def test_nan_logits_fail_the_parity_check():
    from client.onnx.job import _check_parity
    from client.onnx.verify import max_diff_over

    mask = np.ones((1, 2), dtype=np.int64)
    batches = [{"attention_mask": mask}, {"attention_mask": mask}]
    expected = [np.zeros((1, 2), np.float32), np.full((1, 2), np.nan, np.float32)]
    diff = max_diff_over(batches, expected, lambda _b: np.zeros((1, 2), np.float32))
    assert np.isnan(diff)  # max() of [0.0, nan] would have been 0.0
    with pytest.raises(LoraXSError, match="max abs difference nan"):
        _check_parity("onnxruntime fp32 vs PyTorch", diff)


def test_export_refuses_a_factor_file_of_another_base_model(bert_adapter, tiny_bert_dir, tmp_path):
    state, meta = load_adapter(bert_adapter)
    _, basis = build_adapted_model(meta.base_model, "seq-cls", LoraXSConfig(rank=4), labels=LABELS)
    save_basis(tmp_path / "other.basis", basis, "/another/model")
    out = tmp_path / "out"
    out.mkdir()
    line = one_line_error(
        [
            "--adapter",
            bert_adapter,
            "--model",
            tiny_bert_dir,
            "--out",
            out / "m.onnx",
            "--basis",
            tmp_path / "other.basis",
        ],
        out,
    )
    assert "holds factors of base model '/another/model'" in line


def test_export_needs_model_for_an_adapter_of_a_non_default_base_model(bert_adapter, tmp_path):
    line = one_line_error(["--adapter", bert_adapter, "--out", tmp_path / "m.onnx"], tmp_path)
    assert "pass --model" in line


def test_config_checks_its_values(tmp_path):
    for kwargs, message in [
        ({"opset": 5}, "--opset"),
        ({"quantize": "int4"}, "--quantize"),
        ({"repeats": 0}, "--repeats"),
        ({"max_length": 1}, "--max-length"),
        ({"latency_batches": (1, 0)}, "latency batch sizes"),
    ]:
        with pytest.raises(LoraXSError, match=message):
            ExportConfig(adapter=tmp_path / "a.safetensors", out=tmp_path / "m.onnx", **kwargs)


def test_module_entry_point_reports_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "client.export",
            "--adapter",
            str(tmp_path / "none.safetensors"),
            "--out",
            str(tmp_path / "m.onnx"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: adapter file {tmp_path / 'none.safetensors'} does not exist"


# --- the real packaged MiniLM ---------------------------------------------------------------


@pytest.mark.slow
def test_real_minilm_export_through_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAXS_CACHE", str(tmp_path / "cache"))
    config = LoraXSConfig()
    model, basis = build_adapted_model(None, "seq-cls", config, labels=LABELS)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    adapter = tmp_path / "personal.safetensors"
    save_adapter(adapter, adapter_state(model), adapter_meta(None, "seq-cls", config, basis, LABELS))
    store_basis(tmp_path / "cache" / "basis", basis, DEFAULT_MODEL)  # as a federation leaves it: no second SVD
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "client.export",
            "--adapter",
            str(adapter),
            "--out",
            str(tmp_path / "model.onnx"),
            "--quantize",
            "int8",
            "--repeats",
            "3",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "LORAXS_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr
    assert "factors from the local cache" in result.stdout
    assert printed_diff(result.stdout, "onnxruntime fp32 vs PyTorch") <= TOLERANCE
    batch = device_batch(tmp_path, TEXTS)
    got = session(tmp_path / "model.onnx").run(["logits"], batch)[0]
    assert np.abs(got - torch_logits(model, batch, "seq-cls")).max() <= TOLERANCE
    # int8 MatMul weights, fp32 embeddings and head (the accuracy-keeping recipe): about 0.65x of fp32
    assert (tmp_path / "model.int8.onnx").stat().st_size < 0.7 * (tmp_path / "model.onnx").stat().st_size


def test_latency_is_timed_only_with_timing(bert_export, llama_export):
    """The parity check always runs; PyTorch against onnxruntime timing only with --timing."""
    assert "latency" not in llama_export["stdout"] and "max abs difference" in llama_export["stdout"]
    assert "latency, batch 1 x sequence 64, median of 2 runs" in bert_export["stdout"]
