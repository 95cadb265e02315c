"""One ONNX base graph, every user's adapter (`client.export --onnx-adapter`), onnxruntime's
multi-LoRA sharp edges, and `python -m client.predict` (onnxruntime + tokenizers, no torch).

Two users (alice, bob) of one tiny seeded BERT each get their own export; each base graph with
the other user's `.onnx_adapter` must reproduce that user's merged export.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from client.onnx.onnx_adapter import basis_version, load_onnx_adapter, run_with_adapter, write_onnx_adapter
from shared.artifacts.adapter_file import load_adapter
from shared.errors import LoraXSError
from tests.helpers import TEXTS, TOLERANCE, device_batch, export_cli, make_adapter, printed_diff, session

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORAXS_CACHE", str(tmp_path_factory.mktemp("loraxs-cache")))
        yield


@pytest.fixture(scope="module")
def users(tiny_bert_dir, tmp_path_factory, private_cache):
    """alice and bob: adapters of one basis with different seeds, each exported to its own folder
    with --onnx-adapter (alice also with --adapter-as-input: both graphs from one export; bob with
    --timing, which times the base + .onnx_adapter runtime too)."""
    exports = {}
    for name, seed, extra in (("alice", 0, ["--adapter-as-input"]), ("bob", 1, ["--timing"])):
        folder = tmp_path_factory.mktemp(name)
        adapter = make_adapter(tiny_bert_dir, "seq-cls", folder / f"{name}.safetensors", seed=seed)
        code, out, err = export_cli(
            [
                "--adapter",
                adapter,
                "--model",
                tiny_bert_dir,
                "--out",
                folder / "model.onnx",
                "--onnx-adapter",
                "--repeats",
                2,
                *extra,
            ]
        )
        assert code == 0, err
        exports[name] = {
            "folder": folder,
            "adapter": adapter,
            "onnx_adapter": folder / f"{name}.onnx_adapter",
            "stdout": out,
            "description": json.loads((folder / "model.export.json").read_text()),
        }
    return exports


def base_logits(folder: Path, onnx_adapter: Path, batch: dict) -> np.ndarray:
    description = json.loads((folder / "model.export.json").read_text())
    loaded = load_onnx_adapter(onnx_adapter, description["adapter_inputs"], description["basis_fingerprint"])
    return run_with_adapter(session(folder / "model.adapter-base.onnx"), "logits", batch, loaded)


def test_the_folder_holds_the_base_and_the_users_adapter(users):
    alice = users["alice"]
    description = alice["description"]
    assert description["models"]["adapter-base"] == "model.adapter-base.onnx"
    sha256 = hashlib.sha256((alice["folder"] / "alice.onnx_adapter").read_bytes()).hexdigest()
    assert description["onnx_adapter"] == {
        "file": "alice.onnx_adapter",
        "sha256": sha256,
        "model_version": basis_version(description["basis_fingerprint"]),
    }
    assert (alice["folder"] / "alice.onnx_adapter.sha256").read_text() == f"{sha256}  alice.onnx_adapter\n"
    state, _ = load_adapter(alice["adapter"])
    stored = ort.AdapterFormat.read_adapter(str(alice["onnx_adapter"])).get_parameters()
    assert set(stored) == set(state) == set(description["adapter_inputs"])
    for name, value in stored.items():
        assert np.array_equal(value.numpy(), state[name].numpy()), name
    # the adapter parameters are overridable initializers: only the token inputs must be fed
    assert [i.name for i in session(alice["folder"] / "model.adapter-base.onnx").get_inputs()] == list(
        description["inputs"]
    )


def test_one_base_serves_both_users_as_their_merged_exports(users):
    alice, bob = users["alice"], users["bob"]
    batch = device_batch(alice["folder"], TEXTS)
    merged = {name: session(u["folder"] / "model.onnx").run(["logits"], batch)[0] for name, u in users.items()}
    assert np.abs(merged["alice"] - merged["bob"]).max() > 1e-2  # the two users really differ
    for base_of in ("alice", "bob"):  # either user's base graph, each user's adapter
        for user in ("alice", "bob"):
            got = base_logits(users[base_of]["folder"], users[user]["onnx_adapter"], batch)
            assert np.abs(got - merged[user]).max() <= TOLERANCE, (base_of, user)
    assert (alice["folder"] / "model.adapter-base.onnx").read_bytes() == (
        bob["folder"] / "model.adapter-base.onnx"
    ).read_bytes()
    for user in ("A", "B"):
        assert printed_diff(bob["stdout"], f"base + .onnx_adapter (user {user})") <= TOLERANCE
    assert printed_diff(alice["stdout"], "adapter-as-input (user B)") <= TOLERANCE
    assert "onnxruntime fp32, base + .onnx_adapter" in bob["stdout"]  # timed (--timing)


# --- onnxruntime's sharp edges, reproduced, and the guards ---------------------------------


def raw_run(folder: Path, adapters: list[Path], feed: dict) -> np.ndarray:
    """Straight onnxruntime, no guard: adapters activated in order."""
    options, loaded = ort.RunOptions(), []
    for path in adapters:
        loaded.append(ort.LoraAdapter())
        loaded[-1].Load(str(path))
        options.add_active_adapter(loaded[-1])
    return session(folder / "model.adapter-base.onnx").run(["logits"], feed, options)[0]


def test_onnxruntime_two_active_adapters_setting_one_name_the_first_wins_silently(users):
    folder, batch = users["alice"]["folder"], device_batch(users["alice"]["folder"], TEXTS)
    alice, bob = users["alice"]["onnx_adapter"], users["bob"]["onnx_adapter"]
    merged_alice = session(folder / "model.onnx").run(["logits"], batch)[0]
    merged_bob = session(users["bob"]["folder"] / "model.onnx").run(["logits"], batch)[0]
    assert np.abs(raw_run(folder, [alice, bob], batch) - merged_alice).max() <= TOLERANCE
    assert np.abs(raw_run(folder, [bob, alice], batch) - merged_bob).max() <= TOLERANCE


def test_onnxruntime_an_active_adapter_overrides_a_fed_input_and_the_guard_refuses_it(users):
    folder, batch = users["alice"]["folder"], device_batch(users["alice"]["folder"], TEXTS)
    description = users["alice"]["description"]
    bob_state, _ = load_adapter(users["bob"]["adapter"])
    fed = {**batch, **{name: value.numpy() for name, value in bob_state.items()}}
    merged_alice = session(folder / "model.onnx").run(["logits"], batch)[0]
    assert np.abs(raw_run(folder, [users["alice"]["onnx_adapter"]], fed) - merged_alice).max() <= TOLERANCE
    loaded = load_onnx_adapter(
        users["alice"]["onnx_adapter"], description["adapter_inputs"], description["basis_fingerprint"]
    )
    with pytest.raises(LoraXSError, match="the feed sets .* which the active adapter alice.onnx_adapter sets too"):
        run_with_adapter(session(folder / "model.adapter-base.onnx"), "logits", fed, loaded)


def test_a_file_that_does_not_fit_the_base_is_one_line(users, tmp_path):
    description = users["alice"]["description"]
    expected, fingerprint = description["adapter_inputs"], description["basis_fingerprint"]
    state, _ = load_adapter(users["alice"]["adapter"])
    arrays = {name: value.numpy() for name, value in state.items()}
    cases = {
        "missing.onnx_adapter": (None, "does not exist"),
        "garbage.onnx_adapter": (b"not an adapter", "is not an onnxruntime adapter file"),
        "other-basis.onnx_adapter": (("0000000" + fingerprint[7:], arrays), "made for another basis"),
        "other-rank.onnx_adapter": (
            (
                fingerprint,
                {n: (np.zeros((2, 2), np.float32) if n.endswith("lora_R") else v) for n, v in arrays.items()},
            ),
            r"lora_R is \[2, 2\], the graph takes \[4, 4\]",
        ),
        "fewer.onnx_adapter": ((fingerprint, dict(list(arrays.items())[1:])), "is missing"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
            Path(f"{path}.sha256").write_text(hashlib.sha256(content).hexdigest() + f"  {name}\n")
        elif content is not None:
            write_onnx_adapter(path, content[1], content[0])
        with pytest.raises(LoraXSError, match=message):
            load_onnx_adapter(path, expected, fingerprint)
    with pytest.raises(LoraXSError, match="NaN or Inf"):
        write_onnx_adapter(tmp_path / "nan.onnx_adapter", {"x": np.array([np.nan], np.float32)}, fingerprint)


# --- python -m client.predict ----------------------------------------------------------------

PREDICT_AND_LIST_MODULES = """
import json, sys
from client.predict import main
code = main(sys.argv[1:])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
print("MODULES " + json.dumps({"code": code, "heavy": heavy}))
"""


def predict_process(*argv) -> tuple[int, list[str], str, list[str]]:
    """client.predict in a fresh interpreter -> exit code, printed lines, stderr, torch/transformers modules loaded."""
    done = subprocess.run(
        [sys.executable, "-c", PREDICT_AND_LIST_MODULES, *map(str, argv)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stdout.splitlines()
    report = json.loads(lines[-1].removeprefix("MODULES "))
    return report["code"], lines[:-1], done.stderr, report["heavy"]


def expected_lines(folder: Path, logits: np.ndarray) -> list[tuple[str, float]]:
    labels = json.loads((folder / "model.export.json").read_text())["labels"]
    scores = np.exp(logits - logits.max(-1, keepdims=True))
    scores /= scores.sum(-1, keepdims=True)
    return [(labels[i], float(scores[row, i])) for row, i in enumerate(scores.argmax(-1))]


def parse(lines: list[str]) -> list[tuple[str, float, str]]:
    return [(label, float(score), text) for label, score, text in (line.split("\t") for line in lines)]


def test_predict_prints_labels_and_scores_without_importing_torch(users):
    alice, bob = users["alice"], users["bob"]
    batch = device_batch(alice["folder"], TEXTS)
    for adapter, merged_folder in ((None, alice["folder"]), (bob["onnx_adapter"], bob["folder"])):
        code, lines, err, heavy = predict_process(
            "--model-dir", alice["folder"], *(["--adapter", adapter] if adapter else []), *TEXTS
        )
        assert code == 0, err
        assert heavy == []  # neither torch nor transformers was imported
        want = expected_lines(merged_folder, session(merged_folder / "model.onnx").run(["logits"], batch)[0])
        got = parse(lines)
        assert [text for *_, text in got] == TEXTS
        assert [label for label, *_ in got] == [label for label, _ in want]
        assert np.allclose([s for _, s, _ in got], [s for _, s in want], atol=1e-3)


def test_predict_reads_texts_from_a_file(users, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n\n")
    code, lines, err, _ = predict_process("--model-dir", users["bob"]["folder"], "--input", texts)
    assert code == 0, err
    assert [text for *_, text in parse(lines)] == TEXTS


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing-dir", "model folder .* does not exist"),
        ("no-description", "holds no \\*.export.json export description"),
        ("wrong-adapter", "has no checksum file"),
        ("missing-adapter", "adapter .* does not exist"),
        ("no-int8", "holds no int8 model; export with --quantize int8"),
    ],
)
def test_predict_errors_are_one_line(users, tmp_path, case, message):
    folder = users["alice"]["folder"]
    argv = {
        "missing-dir": ["--model-dir", tmp_path / "nowhere", "hi"],
        "no-description": ["--model-dir", tmp_path, "hi"],
        "wrong-adapter": ["--model-dir", folder, "--adapter", users["alice"]["adapter"], "hi"],  # a .safetensors
        "missing-adapter": ["--model-dir", folder, "--adapter", tmp_path / "x.onnx_adapter", "hi"],
        "no-int8": ["--model-dir", folder, "--int8", "hi"],
    }[case]
    code, lines, err, _ = predict_process(*argv)
    assert code == 1 and lines == []
    assert len(err.strip().splitlines()) == 1 and err.startswith("client.predict: error: ")
    assert __import__("re").search(message, err), err
