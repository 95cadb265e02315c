"""The training artifacts split below the top blocks (client.export --training --train-blocks N):
the lower graph run once per text and cached, the upper graphs per step, the same numbers as the
full graphs. A tiny mean-pooled BERT (a PooledClassifier, as MiniLM) split at 1 of its 2 blocks.
"""

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from client.export import main as export_main
from client.onnx_training.backend import OnnxBackend
from client.onnx_training.folder import open_training_folder
from shared.errors import LoraXSError

TOLERANCE = 1e-6
LABELS = 3


def export(argv: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = export_main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def mean_pooled_bert(tiny_bert_dir, tmp_path_factory) -> Path:
    """The tiny BERT as a sentence-transformers folder with mean pooling: a PooledClassifier."""
    folder = tmp_path_factory.mktemp("tiny-mean") / "model"
    shutil.copytree(tiny_bert_dir, folder)
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return folder


@pytest.fixture(scope="module")
def split_training(mean_pooled_bert, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("split-training")
    code, out, err = export(["--training", folder, "--model", mean_pooled_bert, "--rank", "4", "--train-blocks", "1"])
    assert code == 0, err
    assert "split grad_lora_R_upper" in out  # the split graphs were checked against PyTorch
    return folder


def seeded(folder: Path, seed: int, batch: int, length: int) -> tuple[dict, dict, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = open_training_folder(folder, verify=False).description
    params = {
        "lora_R": (0.3 * rng.standard_normal(d["shapes"]["lora_R"])).astype(np.float32),
        "head_weight": (0.2 * rng.standard_normal((LABELS, d["hidden_size"]))).astype(np.float32),
        "head_bias": (0.1 * rng.standard_normal(LABELS)).astype(np.float32),
    }
    lengths = rng.integers(2, length + 1, batch)
    lengths[0] = length
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)  # (B, T), right-padded
    data = {
        "input_ids": rng.integers(1000, 5000, (batch, length)) * mask,
        "attention_mask": mask,
        "token_type_ids": np.zeros((batch, length), dtype=np.int64),
        "labels": rng.integers(0, LABELS, batch),
        "example_index": rng.permutation(100)[:batch],
    }
    return params, data, rng.standard_normal((batch, LABELS)).astype(np.float32)


def backends(folder: Path) -> tuple[OnnxBackend, OnnxBackend]:
    opened = open_training_folder(folder)
    full, split = OnnxBackend(opened), OnnxBackend(opened)
    full.train_top_blocks(None)
    split.train_top_blocks(1)
    return full, split


def test_the_folder_describes_its_split_and_holds_every_graph(split_training):
    folder = open_training_folder(split_training)
    assert folder.split == {"train_blocks": 1, "blocks": 2, "lower_layers": [0, 1, 2, 3], "upper_layers": [4, 5, 6, 7]}
    assert all(".layer.1." in folder.layers[k] for k in folder.split["upper_layers"])
    for kind in ("step", "features", "lower", "upper_step", "upper_features"):
        assert folder.graph(kind).is_file()
    assert sorted(p.name for p in split_training.glob("*.data")) == ["frozen_weights.data"]


def test_the_split_gives_the_full_graphs_gradients_and_features(split_training):
    full, split = backends(split_training)
    assert split.split is not None and full.split is None
    for seed, (batch, length) in enumerate(((4, 9), (7, 23), (1, 3))):
        params, data, offset = seeded(split_training, seed, batch, length)
        whole_loss, whole = full.loss_and_grads(data, params, offset)
        for attempt in ("lower graph", "cache"):  # the second step reads the hidden states back
            loss, grads = split.loss_and_grads(data, params, offset)
            assert abs(loss - whole_loss) <= TOLERANCE, attempt
            assert np.abs(grads["lora_R"][4:] - whole["lora_R"][4:]).max() <= TOLERANCE, attempt
            assert np.abs(grads["lora_R"][4:]).max() > 1e-4  # the comparison is not of zeros
            assert not grads["lora_R"][:4].any()  # the lower R stay as given
            for key in ("head_weight", "head_bias"):
                assert np.abs(grads[key] - whole[key]).max() <= TOLERANCE, attempt
        assert set(split.cache) >= {int(i) for i in data["example_index"]}
        assert np.abs(split.features(data, params) - full.features(data, params)).max() <= TOLERANCE


def test_texts_missing_from_the_cache_and_new_lower_r_are_computed_again(split_training, monkeypatch):
    import client.onnx_training.backend as backend_module

    full, split = backends(split_training)
    params, data, offset = seeded(split_training, 5, 6, 12)
    half = {k: v[:3] for k, v in data.items()}
    split.features(half, params)  # three texts cached, three not
    assert len(split.cache) == 3
    monkeypatch.setattr(backend_module, "MICRO_TOKENS", 12)  # the lower graph one text a run
    for lower_change in (0.0, 0.5):
        params["lora_R"][:4] += lower_change  # other lower R: other hidden states
        loss, grads = split.loss_and_grads(data, params, offset)
        whole_loss, whole = full.loss_and_grads(data, params, offset)
        assert abs(loss - whole_loss) <= TOLERANCE
        assert np.abs(grads["lora_R"] - whole["lora_R"] * split.trainable_layers[:, None, None]).max() <= TOLERANCE
    assert len(split.cache) == 6


def test_only_the_folders_split_uses_the_split_graphs(split_training):
    backend = OnnxBackend(open_training_folder(split_training))
    for blocks, split, trained in (
        (1, True, [False] * 4 + [True] * 4),
        (2, False, [True] * 8),
        (None, False, [True] * 8),
    ):
        backend.train_top_blocks(blocks)
        assert (backend.split is not None) == split and backend.trainable_layers.tolist() == trained


def test_client_run_trains_through_the_split(split_training, tmp_path, capsys):
    from client.run import main as run_main

    data = tmp_path / "data"
    data.mkdir()
    words = {"pos": ["good", "great", "fine"], "neg": ["bad", "awful", "dull"]}
    rng = np.random.default_rng(0)
    for name, count in (("train", 24), ("test", 8)):
        rows = [
            {"text": " ".join(rng.choice(words[label], 3)) + f" film {i}", "label": label}
            for i, label in enumerate(["pos", "neg"] * (count // 2))
        ]
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "personal.safetensors"
    assert (
        run_main(
            [
                "--runtime",
                "onnx",
                "--model-dir",
                str(split_training),
                "--data",
                str(data),
                "--epochs",
                "1",
                "--train-blocks",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("runtime onnx") and out.is_file()


@pytest.mark.parametrize(
    "split",
    [
        "not a table",
        {"train_blocks": 2, "blocks": 2, "lower_layers": [0, 1, 2, 3], "upper_layers": [4, 5, 6, 7]},
        {"train_blocks": 1, "blocks": 2, "lower_layers": [0, 1, 2], "upper_layers": [4, 5, 6, 7]},
        {"train_blocks": 1, "blocks": 2, "lower_layers": [0, 1, 2, 3], "upper_layers": [4, 5, 6, "7"]},
        {"train_blocks": True, "blocks": 2, "lower_layers": [0, 1, 2, 3], "upper_layers": [4, 5, 6, 7]},
    ],
)
def test_a_crafted_split_is_a_one_line_rejection(split_training, tmp_path, split):
    copy = tmp_path / "copy"
    shutil.copytree(split_training, copy)
    description = json.loads((copy / "training.json").read_text())
    (copy / "training.json").write_text(json.dumps(description | {"split": split}))
    with pytest.raises(LoraXSError, match="split") as raised:
        open_training_folder(copy, verify=False)
    assert "\n" not in str(raised.value)
