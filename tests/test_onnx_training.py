"""Training on a device with onnxruntime: the training artifacts (`client.export --training`),
gradient parity with PyTorch, the torch-free folder, backend and adapter writer, and imports.

One tiny-BERT export per module (an export takes tens of seconds); tests feed its graphs
through the device code (onnxruntime + numpy) and compare with PyTorch autograd on a model built
independently from the same base folder and factors.
"""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from client.export import main as export_main
from client.onnx_training.backend import OnnxBackend
from client.onnx_training.folder import FolderTokenizer, open_training_folder
from client.onnx_training.step_graph import check_exportable
from shared.artifacts.adapter_arrays import read_adapter_arrays, state_digest, write_adapter
from shared.artifacts.adapter_file import adapter_meta, load_adapter, save_adapter
from shared.artifacts.adapter_file import state_digest as torch_digest
from shared.base_models import build_adapted_model
from shared.errors import LoraXSError
from shared.loraxs.config import LoraXSConfig
from shared.loraxs.model import adapted_layers, adapter_state

REPO = Path(__file__).resolve().parents[1]
LABELS = ["a", "b", "c"]
TINY_TOLERANCE = 1e-6  # max abs difference of loss and gradients, tiny model
NOT_ON_A_DEVICE = ("torch", "transformers", "datasets")


def export(argv: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = export_main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tiny_training(tiny_bert_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("training")
    code, out, err = export(["--training", folder, "--model", tiny_bert_dir, "--rank", "4"])
    assert code == 0, err
    return folder


def reference(tiny_bert_dir: str, params: dict):
    """A PyTorch model built on its own from the base folder (same canonical SVD), params loaded."""
    model, basis = build_adapted_model(tiny_bert_dir, "seq-cls", LoraXSConfig(rank=4), labels=LABELS)
    with torch.no_grad():
        for layer, value in zip(adapted_layers(model).values(), params["lora_R"]):
            layer.lora_R.copy_(torch.from_numpy(value))
        model.classifier.weight.copy_(torch.from_numpy(params["head_weight"]))
        model.classifier.bias.copy_(torch.from_numpy(params["head_bias"]))
    return model.eval(), basis


def seeded(folder, seed=0, batch=4, length=9):
    rng = np.random.default_rng(seed)
    d = open_training_folder(folder).description
    params = {
        "lora_R": (0.3 * rng.standard_normal(d["shapes"]["lora_R"])).astype(np.float32),
        "head_weight": (0.2 * rng.standard_normal((len(LABELS), d["hidden_size"]))).astype(np.float32),
        "head_bias": (0.1 * rng.standard_normal(len(LABELS))).astype(np.float32),
    }
    mask = np.ones((batch, length), dtype=np.int64)
    mask[0, length // 2 :] = 0
    tokens = {
        "input_ids": rng.integers(1000, 5000, (batch, length)),
        "attention_mask": mask,
        "token_type_ids": np.zeros((batch, length), dtype=np.int64),
    }
    return params, tokens | {"labels": rng.integers(0, len(LABELS), batch)}


def test_the_folder_holds_both_graphs_one_weight_file_and_checksums(tiny_training):
    folder = open_training_folder(tiny_training)  # checks every sha256
    names = sorted(p.name for p in tiny_training.iterdir())
    assert names == sorted(
        [
            "train_step.onnx",
            "features.onnx",
            "frozen_weights.data",
            "tokenizer.json",
            "tokenizer_config.json",
            "training.json",
        ]
    )
    assert set(folder.description["files"]) == set(names) - {"training.json"}
    # the frozen weights once: not one copy per graph
    import onnx

    model = onnx.load(str(tiny_training / "features.onnx"), load_external_data=False)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"frozen_weights.data"}
    params_bytes = sum(
        p.numel() * 4
        for p in build_adapted_model(folder.description["base_model"], "seq-cls", LoraXSConfig(rank=4), labels=LABELS)[
            0
        ].parameters()
    )
    assert (tiny_training / "frozen_weights.data").stat().st_size < 1.3 * params_bytes


def test_gradients_match_pytorch_on_a_tiny_model(tiny_training, tiny_bert_dir):
    folder = open_training_folder(tiny_training)
    backend = OnnxBackend(folder)
    for seed, (batch, length) in enumerate(((4, 9), (7, 23), (1, 3))):
        params, batch_data = seeded(tiny_training, seed, batch, length)
        offset = np.random.default_rng(seed).standard_normal((batch, len(LABELS))).astype(np.float32)
        loss, grads = backend.loss_and_grads(batch_data, params, offset)
        model, basis = reference(tiny_bert_dir, params)
        assert basis.fingerprint == folder.fingerprint
        tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in batch_data.items() if k != "labels"}
        logits = model(**tensors).logits + torch.from_numpy(offset)
        expected = torch.nn.functional.cross_entropy(logits, torch.from_numpy(batch_data["labels"]))
        expected.backward()
        assert abs(loss - float(expected.detach())) <= TINY_TOLERANCE
        r_grads = np.stack([m.lora_R.grad.numpy() for m in adapted_layers(model).values()])
        assert np.abs(grads["lora_R"] - r_grads).max() <= TINY_TOLERANCE
        assert np.abs(grads["lora_R"]).max() > 1e-4  # the comparison is not of zeros
        assert np.abs(grads["head_weight"] - model.classifier.weight.grad.numpy()).max() <= TINY_TOLERANCE
        assert np.abs(grads["head_bias"] - model.classifier.bias.grad.numpy()).max() <= TINY_TOLERANCE
        hooked = []
        model.classifier.register_forward_hook(lambda _m, args, _o: hooked.append(args[0].detach().numpy()))
        with torch.no_grad():
            model(**tensors)
        assert np.abs(backend.features(batch_data, params) - hooked[0]).max() <= TINY_TOLERANCE


def test_untrained_layers_get_zero_gradients(tiny_training):
    backend = OnnxBackend(open_training_folder(tiny_training))
    params, batch = seeded(tiny_training)
    backend.trainable_layers[:2] = False
    _, grads = backend.loss_and_grads(batch, params)
    assert not grads["lora_R"][:2].any() and grads["lora_R"][2:].any()


def test_a_changed_file_is_refused_with_one_line(tiny_training, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_training, copy)
    with open(copy / "frozen_weights.data", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x01\x02")
    with pytest.raises(LoraXSError, match="does not match its checksum"):
        open_training_folder(copy)
    (copy / "training.json").write_text("{not json")
    with pytest.raises(LoraXSError, match="cannot read"):
        open_training_folder(copy)
    (copy / "training.json").write_text(
        json.dumps(
            {
                "format": "loraxs-onnx-training",
                "format_version": "1",
                "task": "seq-cls",
                "rank": 4,
                "layers": ["x"],
                "token_inputs": ["input_ids"],
                "files": [],
                "graphs": {"step": "../x"},
            }
        )
    )
    with pytest.raises(LoraXSError, match="not a usable training description"):
        open_training_folder(copy)


def test_an_existing_folder_is_replaced_only_with_force(tiny_training, tiny_bert_dir):
    before = (tiny_training / "training.json").read_text()
    code, _, err = export(["--training", tiny_training, "--model", tiny_bert_dir, "--rank", "4"])
    assert code == 1 and "--force" in err and len(err.strip().splitlines()) == 1
    assert (tiny_training / "training.json").read_text() == before


def test_flags_of_the_other_export_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        export(["--training", tmp_path, "--out", tmp_path / "m.onnx"])
    with pytest.raises(SystemExit):
        export(["--adapter", tmp_path / "a.safetensors", "--out", tmp_path / "m.onnx", "--rank", "4"])


def test_a_classifier_without_one_linear_head_is_refused():
    model = torch.nn.Module()
    model.classifier = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with pytest.raises(LoraXSError, match="BERT-like encoders"):
        check_exportable(model, "seq-cls")


def test_numpy_adapter_files_are_the_pytorch_format(tiny_training, tiny_bert_dir, tmp_path):
    """Written without torch, read by the PyTorch loader (checksums included), and back."""
    from client.onnx_training.personalize import adapter_metadata
    from client.onnx_training.personalize import adapter_state as state_of

    folder = open_training_folder(tiny_training)
    params, _ = seeded(tiny_training)
    state = state_of(folder, params)
    path = tmp_path / "device.safetensors"
    write_adapter(path, state, adapter_metadata(folder, LABELS, kind="personal", runtime="onnx"))
    loaded, meta = load_adapter(path)
    assert meta.labels == tuple(LABELS) and meta.basis_fingerprint == folder.fingerprint
    assert meta.extra["runtime"] == "onnx"
    assert meta.extra.get("pooling") == json.loads(folder.description["adapter_meta"]["extra"]).get("pooling")
    assert torch_digest(loaded) == state_digest(state)
    model, basis = reference(tiny_bert_dir, params)
    assert set(loaded) == set(adapter_state(model))  # the names the PyTorch model gives them
    torch_path = tmp_path / "torch.safetensors"
    save_adapter(
        torch_path, adapter_state(model), adapter_meta(tiny_bert_dir, "seq-cls", LoraXSConfig(rank=4), basis, LABELS)
    )
    arrays, strings = read_adapter_arrays(torch_path)
    for name, value in adapter_state(model).items():
        assert np.array_equal(arrays[name], value.numpy())
    data = bytearray(torch_path.read_bytes())
    data[-3] ^= 0xFF  # a tensor byte
    torch_path.write_bytes(bytes(data))
    with pytest.raises(LoraXSError, match="corrupt"):
        read_adapter_arrays(torch_path)


def test_tokenizer_matches_the_transformers_one(tiny_training, tiny_bert_dir):
    from shared.base_models import load_tokenizer

    texts = ["A short one.", "Something a little longer, with punctuation; and more words than that."]
    tokenize = FolderTokenizer(open_training_folder(tiny_training))
    expected = load_tokenizer(tiny_bert_dir)(texts, truncation=True, max_length=8)["input_ids"]
    assert [list(ids) for ids in tokenize(texts, 8)] == expected
    whole = load_tokenizer(tiny_bert_dir)(texts)["input_ids"]
    assert [list(ids) for ids in tokenize(texts, None)] == whole


def test_plain_rows_split_as_the_datasets_loader_does(tmp_path):
    from shared.data.local_folder import load_local_folder, read_local_rows

    rows = [{"text": f"text number {i}", "label": "xyz"[i % 3]} for i in range(37)]
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for seed in (0, 5):
        plain, splits = read_local_rows(tmp_path, seed=seed), load_local_folder(tmp_path, seed=seed)
        assert plain.train_texts == splits.train["text"] and plain.test_texts == splits.test["text"]
        assert plain.train_labels == splits.train["label"] and plain.labels == splits.labels


def test_the_device_modules_import_no_torch():
    code = (
        "import sys, client.onnx_training.personalize, client.onnx_training.backend, "
        "client.onnx_training.folder, shared.artifacts.adapter_arrays, shared.data.local_folder; "
        f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & {set(NOT_ON_A_DEVICE)!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [], f"the device path imports {done.stdout.strip()}"


@pytest.mark.slow
def test_tiny_llama_causal_lm_step_exports_and_matches(tiny_llama_dir, tmp_path):
    code, out, err = export(["--training", tmp_path, "--model", tiny_llama_dir, "--rank", "4", "--task", "causal-lm"])
    assert code == 0, err
    description = open_training_folder(tmp_path).description
    assert description["task"] == "causal-lm" and description["parity_max_abs"]["grad_lora_R"] <= TINY_TOLERANCE


@pytest.mark.slow
def test_gradients_match_pytorch_on_minilm(tmp_path):
    code, out, err = export(["--training", tmp_path])
    assert code == 0, err
    folder = open_training_folder(tmp_path)
    backend = OnnxBackend(folder)
    rng = np.random.default_rng(0)
    shapes = folder.description["shapes"]
    params = {
        "lora_R": (0.05 * rng.standard_normal(shapes["lora_R"])).astype(np.float32),
        "head_weight": (0.1 * rng.standard_normal((2, folder.description["hidden_size"]))).astype(np.float32),
        "head_bias": np.zeros(2, dtype=np.float32),
    }
    texts = [
        "The film was a delight from start to finish.",
        "Not worth the ticket.",
        "A slow, thoughtful story about two brothers who inherit a failing farm.",
    ] * 3
    ids = FolderTokenizer(folder)(texts, 64)
    length = max(len(i) for i in ids)
    batch = {
        "input_ids": np.zeros((len(ids), length), dtype=np.int64),
        "attention_mask": np.zeros((len(ids), length), dtype=np.int64),
    }
    for row, i in enumerate(ids):
        batch["input_ids"][row, : len(i)], batch["attention_mask"][row, : len(i)] = i, 1
    batch["token_type_ids"] = np.zeros_like(batch["input_ids"])
    batch["labels"] = np.arange(len(ids)) % 2
    loss, grads = backend.loss_and_grads(batch, params)
    model, basis = build_adapted_model(None, "seq-cls", LoraXSConfig(), labels=["neg", "pos"])
    assert basis.fingerprint == folder.fingerprint
    with torch.no_grad():
        for layer, value in zip(adapted_layers(model).values(), params["lora_R"]):
            layer.lora_R.copy_(torch.from_numpy(value))
        model.classifier.weight.copy_(torch.from_numpy(params["head_weight"]))
        model.classifier.bias.zero_()
    model.eval()
    logits = model(**{k: torch.from_numpy(v) for k, v in batch.items() if k != "labels"}).logits
    expected = torch.nn.functional.cross_entropy(logits, torch.from_numpy(batch["labels"]))
    expected.backward()
    r_grads = np.stack([m.lora_R.grad.numpy() for m in adapted_layers(model).values()])
    assert abs(loss - float(expected.detach())) <= 1e-5
    assert np.abs(grads["lora_R"] - r_grads).max() <= 1e-5
    assert np.abs(grads["head_weight"] - model.classifier.weight.grad.numpy()).max() <= 1e-5
    # the graphs split below the recipe's top 2 blocks: the same numbers for what trains
    split = OnnxBackend(folder)
    split.train_top_blocks(2)
    assert folder.split["train_blocks"] == 2 and split.split is not None
    upper = split.trainable_layers
    batch["example_index"] = np.arange(len(ids))
    for _ in ("lower graph", "cache"):
        split_loss, split_grads = split.loss_and_grads(batch, params)
        assert abs(split_loss - float(expected.detach())) <= 1e-5
        assert np.abs(split_grads["lora_R"][upper] - r_grads[upper]).max() <= 1e-5
        assert not split_grads["lora_R"][~upper].any()
        assert np.abs(split_grads["head_weight"] - model.classifier.weight.grad.numpy()).max() <= 1e-5
    assert np.abs(split.features(batch, params) - backend.features(batch, params)).max() <= 1e-5


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    words = {"pos": ["good", "great", "fine", "lovely"], "neg": ["bad", "awful", "poor", "dull"]}
    for name, count in (("train", 40), ("test", 12)):
        rows = [
            {"text": " ".join(rng.choice(words[label], 3)) + f" film {i}", "label": label}
            for i, label in enumerate(["pos", "neg"] * (count // 2))
        ]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_client_run_on_onnx_imports_no_torch_and_writes_an_adapter_pytorch_reads(
    tiny_training, small_folder, tiny_bert_dir, tmp_path, capsys
):
    out = tmp_path / "personal.safetensors"
    code = (
        "import sys; from client.run import main; "
        f"rc = main(['--runtime', 'onnx', '--model-dir', {str(tiny_training)!r}, '--data', {str(small_folder)!r}, "
        f"'--out', {str(out)!r}, '--epochs', '2']); "
        f"print(rc, ' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & {set(NOT_ON_A_DEVICE)!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "0", done.stdout[-2000:]  # exit 0, and nothing after it: no torch
    assert "held-out accuracy after" in done.stdout and "held-out calibration" in done.stdout
    from shared.artifacts.open_adapter import open_adapter, read_adapter

    adapter = read_adapter(out, model=tiny_bert_dir)
    assert adapter.meta.extra["kind"] == "personal" and adapter.meta.labels == ("neg", "pos")
    # the same personal parts as the PyTorch path, in the same file entries: the kept line says which
    kept = next(line for line in done.stdout.splitlines() if line.startswith("parts kept:"))
    assert ("lexical" in kept) == (adapter.parts.lexical is not None), done.stdout
    assert ("temperature" in kept) == (adapter.parts.temperature != 1.0), done.stdout
    assert not any(name.startswith("lexical.") for name in adapter.state)  # split off: the federation never sees them
    opened = open_adapter(adapter)  # the PyTorch path: same factors (fingerprint), same names and shapes
    assert opened.basis.fingerprint == open_training_folder(tiny_training).fingerprint
    # and the onnx runtime starts from it
    from client.run import main as run_main

    again = tmp_path / "again.safetensors"
    assert (
        run_main(
            [
                "--runtime",
                "onnx",
                "--model-dir",
                str(tiny_training),
                "--data",
                str(small_folder),
                "--adapter",
                str(out),
                "--out",
                str(again),
                "--epochs",
                "1",
                "--joint-lexical",
            ]
        )
        == 0
    )
    assert load_adapter(again)[1].extra["started_from"] == out.name
    said = capsys.readouterr().out
    assert "trained around it (--joint-lexical)" in said, said[-2000:]


def test_client_run_on_onnx_refuses_what_it_cannot_do(tiny_training, small_folder, tmp_path, capsys):
    from client.personalization import DEFAULT_OUT_NAME as TORCH_DEFAULT
    from client.run import DEFAULT_OUT_NAME
    from client.run import main as run_main

    assert DEFAULT_OUT_NAME == TORCH_DEFAULT
    cases = [
        (["--runtime", "onnx"], "needs --model-dir"),
        (["--runtime", "onnx", "--model-dir", str(tiny_training), "--rank", "4"], "--rank: not with --runtime onnx"),
        (["--runtime", "torch", "--model-dir", str(tiny_training)], "pass --runtime onnx"),
        (["--runtime", "onnx", "--model-dir", str(tmp_path)], "holds no training.json"),
    ]
    for argv, message in cases:
        assert run_main(["--data", str(small_folder), *argv]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def _train_message(arrays, fingerprint: str, node_id: int = 7):
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    msg = Message(
        RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1, "fingerprint": fingerprint})}),
        dst_node_id=node_id,
        message_type=MessageType.TRAIN,
    )
    msg.metadata.__dict__["_message_id"] = f"m{node_id}"
    return msg


def test_a_federation_mixes_onnx_and_pytorch_nodes_and_averages_them_exactly(
    tiny_training, small_folder, tiny_bert_dir, tmp_path
):
    """The same global adapter to a PyTorch node and an onnx node (node config runtime = "onnx"):
    same fingerprint, same keys, shapes and dtype back, and FedAvg's mean of the two is the
    weighted mean of their arrays."""
    import shutil

    from flwr.app import Context, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    from client.app import app
    from client.node_state import node_state_for
    from shared.federation.protocol import pack_adapter
    from shared.federation.run_config import FederationConfig

    config = FederationConfig(
        model=tiny_bert_dir, rank=4, labels="neg,pos", lr=0.01, head_lr=0.01, batch_size=8, max_length=32
    )
    model, basis = build_adapted_model(tiny_bert_dir, "seq-cls", LoraXSConfig(rank=4), labels=["neg", "pos"])
    assert basis.fingerprint == open_training_folder(tiny_training).fingerprint
    arrays = pack_adapter(adapter_state(model), "fp32")
    replies = {}
    for runtime in ("torch", "onnx"):
        data = tmp_path / runtime
        shutil.copytree(small_folder, data)
        node_config = {"data-dir": str(data), "partition-id": 0}
        if runtime == "onnx":
            node_config |= {"runtime": "onnx", "onnx-model-dir": str(tiny_training)}
        context = Context(
            run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=config.to_run_config()
        )
        if runtime == "torch":
            node_state_for(context).store_basis(basis, tiny_bert_dir)
        replies[runtime] = app(_train_message(arrays, basis.fingerprint), context)
        assert not replies[runtime].has_error(), replies[runtime].error
        assert replies[runtime].content["status"]["fingerprint"] == basis.fingerprint
    torch_arrays, onnx_arrays = (replies[k].content["arrays"] for k in ("torch", "onnx"))
    assert list(torch_arrays.keys()) == list(onnx_arrays.keys()) == list(arrays.keys())
    for key in arrays.keys():
        a, b = torch_arrays[key].numpy(), onnx_arrays[key].numpy()
        assert a.shape == b.shape == arrays[key].numpy().shape and a.dtype == b.dtype == np.float32
        assert not np.array_equal(b, arrays[key].numpy())  # the onnx node trained
    for reply, weight in ((replies["torch"], 3), (replies["onnx"], 1)):
        reply.content["metrics"]["num-examples"] = weight
    mean = aggregate_arrayrecords([replies["torch"].content, replies["onnx"].content], "num-examples")
    for key in arrays.keys():
        expected = (3 * torch_arrays[key].numpy().astype(np.float64) + onnx_arrays[key].numpy()) / 4
        assert np.abs(mean[key].numpy() - expected).max() <= 1e-7


def test_an_onnx_nodes_training_message_imports_no_torch(tiny_training, small_folder, tmp_path):
    """A training message on a node with runtime = "onnx", in a fresh interpreter as a
    flwr-clientapp process runs it: a reply with arrays, and no torch, transformers or datasets."""
    folder = open_training_folder(tiny_training)
    script = tmp_path / "message.py"
    script.write_text(f"""
import sys
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from client.app import app
TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
shape = {folder.description["shapes"]["lora_R"]!r}
arrays = ArrayRecord({{"lora_R": Array(np.zeros(shape, np.float32)),
                      "classifier.weight": Array(np.zeros((2, {folder.description["hidden_size"]}), np.float32)),
                      "classifier.bias": Array(np.zeros(2, np.float32))}})
context = Context(run_id=1, node_id=7, node_config={{"data-dir": {str(small_folder)!r}, "runtime": "onnx",
                  "onnx-model-dir": {str(tiny_training)!r}}}, state=RecordDict(), run_config={{}})
msg = Message(RecordDict({{"arrays": arrays, "config": ConfigRecord({{"server-round": 1,
              "fingerprint": {folder.fingerprint!r}}})}}), dst_node_id=7, message_type=MessageType.TRAIN)
msg.metadata.__dict__["_message_id"] = "m"
reply = app(msg, context)
assert not reply.has_error(), reply.error
print(float(np.abs(reply.content["arrays"]["lora_R"].numpy()).max()) > 0,
      sorted({{m.split(".")[0] for m in sys.modules}} & {set(NOT_ON_A_DEVICE)!r}))
""")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "[]"], done.stdout


def test_node_settings_defaults_are_the_federation_configs():
    from client.onnx_training.node_messages import NodeSettings
    from shared.federation.run_config import FederationConfig

    federation = FederationConfig()
    for name, field in NodeSettings.__dataclass_fields__.items():
        assert getattr(federation, name) == field.default, name
    assert NodeSettings.from_run_config(FederationConfig(lr=0.5).to_run_config()).lr == 0.5
    assert "secure aggregation" in NodeSettings(secure_aggregation=True).refusal()


def test_a_supernode_on_the_onnx_runtime_passes_it_as_node_config(tmp_path, small_folder):
    from flwr.common.config import parse_config_args

    from deployment.supernode import SuperNodeConfig, supernode_command

    model_dir = tmp_path / "my artifacts"
    config = SuperNodeConfig("127.0.0.1:9092", small_folder, insecure=True, runtime="onnx", onnx_model_dir=model_dir)
    command = supernode_command(config, runtime_port=40001)
    node_config = parse_config_args([command[command.index("--node-config") + 1]])
    assert node_config == {"data-dir": str(small_folder), "runtime": "onnx", "onnx-model-dir": str(model_dir.resolve())}
    with pytest.raises(LoraXSError, match="torch or onnx"):
        SuperNodeConfig("127.0.0.1:9092", small_folder, runtime="tensorflow")


def test_a_crafted_description_is_only_ever_a_one_line_rejection(tiny_training, tmp_path):
    """Every field of a valid description replaced by odd values: open_training_folder either
    accepts it or raises LoraXSError, nothing else."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_training, copy)
    valid = json.loads((copy / "training.json").read_text())
    odd = [None, 0, -1, True, 1e308, "", "x" * 300, [], {}, ["../etc/passwd"], {"a": 1}, [1, 2, 3]]
    for key in valid:
        for value in odd:
            (copy / "training.json").write_text(json.dumps(valid | {key: value}))
            try:
                open_training_folder(copy, verify=False)
            except LoraXSError:
                pass
    (copy / "training.json").write_text(json.dumps(valid))
    assert open_training_folder(copy).fingerprint == valid["basis_fingerprint"]


def test_train_blocks_picks_the_same_layers_as_the_pytorch_backend(tiny_training):
    backend = OnnxBackend(open_training_folder(tiny_training))
    backend.train_top_blocks(1)  # tiny BERT: 2 blocks x 4 adapted layers
    assert backend.trainable_layers.tolist() == [False] * 4 + [True] * 4
    assert all(".layer.1." in n for n, on in zip(backend.layer_names, backend.trainable_layers) if on)
    backend.train_top_blocks(None)
    assert backend.trainable_layers.all()


def test_runtime_auto_trains_on_onnx_where_the_data_folder_holds_artifacts(
    tiny_training, small_folder, tmp_path, capsys
):
    import shutil

    from client.run import main as run_main

    data = tmp_path / "data"
    shutil.copytree(small_folder, data)
    shutil.copytree(tiny_training, data / ".loraxs" / "onnx-training")
    assert run_main(["--data", str(data), "--epochs", "1", "--runtime", "auto"]) == 0
    assert capsys.readouterr().out.startswith("runtime onnx")
    assert load_adapter(data / "personal_adapter.safetensors")[1].extra["runtime"] == "onnx"


def test_micro_batches_give_the_whole_batchs_loss_and_gradients(tiny_training, monkeypatch):
    import client.onnx_training.backend as backend_module

    backend = OnnxBackend(open_training_folder(tiny_training))
    params, batch = seeded(tiny_training, seed=3, batch=7, length=11)
    offset = np.random.default_rng(3).standard_normal((7, len(LABELS))).astype(np.float32)
    whole = backend.loss_and_grads(batch, params, offset)
    monkeypatch.setattr(backend_module, "MICRO_TOKENS", 22)  # 2 rows a run: 4 runs
    parts = backend.loss_and_grads(batch, params, offset)
    assert abs(whole[0] - parts[0]) <= 1e-6
    for key in whole[1]:
        assert np.abs(whole[1][key] - parts[1][key]).max() <= 1e-6
