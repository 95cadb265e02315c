"""Every file on the device is untrusted: keys, adapters, inputs, data folders, flags. Pipes and
devices never block, sizes are capped before reading, malformed files and meaningless values
are one line, and an adapter that cannot come from training is refused."""

import io
import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.artifacts.adapter_bounds import MAX_RELATIVE_EFFECT, check_adapter_effect, relative_effects
from shared.artifacts.adapter_file import adapter_meta, load_adapter, save_adapter
from shared.artifacts.open_adapter import open_adapter, read_adapter
from shared.artifacts.untrusted_file import bounded_lines, read_untrusted
from shared.base_models import build_adapted_model
from shared.crypto.at_rest import AtRestError, key_from_file
from shared.crypto.sealing import SealError, load_public_key
from shared.data.local_folder import load_local_folder
from shared.errors import LoraXSError
from shared.federation.run_config import FederationConfig
from shared.loraxs.config import LoraXSConfig
from shared.loraxs.model import adapter_state
from tests.helpers import RANK, within, write_reviews

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


# -- one reader for untrusted files -----------------------------------------------------------


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    "reader, error",
    [
        (lambda p: read_untrusted(p, "key file", 1000), LoraXSError),
        (key_from_file, AtRestError),
        (load_public_key, SealError),
        (lambda p: load_adapter(p), LoraXSError),
    ],
)
def test_a_named_pipe_or_a_device_is_refused_without_blocking(fifo, reader, error):
    for path, what in ((fifo, "a named pipe"), (Path("/dev/zero"), "a device"), (fifo.parent, "a folder")):
        with pytest.raises(error, match=f"is {what}, not a regular file"):
            within(5, lambda: reader(path))


def test_a_file_over_its_cap_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "key"
    path.write_bytes(b"a" * 1001)
    with pytest.raises(AtRestError, match="more than the 1,000 bytes allowed"):
        key_from_file(path)
    path.write_bytes(b"ab" * 32)
    path.chmod(0o600)
    assert key_from_file(path).key == bytes.fromhex("ab" * 32)


@FUZZ
@given(st.binary(max_size=200), st.integers(0, 150))
def test_read_untrusted_returns_the_bytes_or_refuses_above_the_cap(tmp_path_factory, data, cap):
    path = tmp_path_factory.mktemp("u") / "f"
    path.write_bytes(data)
    if len(data) > cap:
        with pytest.raises(LoraXSError, match="allowed"):
            read_untrusted(path, "file", cap)
    else:
        assert read_untrusted(path, "file", cap) == data


@FUZZ
@given(st.binary(max_size=300), st.integers(1, 64), st.integers(1, 400))
def test_bounded_lines_gives_lines_or_one_error(data, max_line, max_total):
    try:
        lines = list(bounded_lines(io.BytesIO(data), "input", max_total, max_line))
    except LoraXSError as err:
        assert "\n" not in str(err)
        return
    assert len(data) <= max_total
    assert all(len(line.encode()) <= max_line for line in lines)
    parts = data.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
    assert lines == [part.decode("utf-8").rstrip("\r\n") for part in parts]


def test_endless_input_stops_at_its_cap():
    with open("/dev/zero", "rb") as zeros, pytest.raises(LoraXSError, match="a line longer than"):
        list(bounded_lines(zeros, "stdin", 10 * 2**20, 2**20))
    endless = io.BytesIO(b"short line\n" * 10_000)
    with pytest.raises(LoraXSError, match="more than the 1,000 bytes allowed"):
        list(bounded_lines(endless, "stdin", 1000, 100))


# -- data folders say what they are -------------------------------------------------------------


def rows(n: int = 12) -> list[dict]:
    return [{"text": f"text number {i}", "label": ("pos", "neg")[i % 2]} for i in range(n)]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_test_file_without_a_train_file_is_refused(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", rows())
    with pytest.raises(LoraXSError, match="holds test.jsonl but no train file"):
        load_local_folder(tmp_path)


@pytest.mark.parametrize("kind", ["folder", "fifo", "dangling"])
def test_a_train_file_that_is_not_a_regular_file_is_refused(tmp_path, kind):
    write_jsonl(tmp_path / "test.jsonl", rows())
    train = tmp_path / "train.jsonl"
    {"folder": train.mkdir, "fifo": lambda: os.mkfifo(train), "dangling": lambda: train.symlink_to(tmp_path / "gone")}[
        kind
    ]()
    with pytest.raises(LoraXSError, match="train.jsonl is not a regular file"):
        within(5, lambda: load_local_folder(tmp_path))


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("text,label\ngood,pos\nbad,neg,extra\nfine,pos\n", 3, "3 field"),
        ("text,label\ngood,pos\nbad\nfine,pos\n", 3, "1 field"),
        ('text,label\ngood,pos\n"bad,neg\nfine,pos\nok,neg\n', 3, "a quote opened here is never closed"),
    ],
)
def test_malformed_csv_is_refused_with_its_line(tmp_path, text, line, message):
    (tmp_path / "data.csv").write_text(text)
    with pytest.raises(LoraXSError, match=rf"data.csv:{line}: {message}"):
        load_local_folder(tmp_path)


def test_quoted_multi_line_text_is_still_fine(tmp_path):
    (tmp_path / "data.csv").write_text('text,label\n"a film,\nin two lines",pos\nbad,neg\nfine,pos\nawful,neg\n')
    splits = load_local_folder(tmp_path)
    assert "a film,\nin two lines" in list(splits.train["text"]) + list(splits.test["text"])


@FUZZ
@given(st.lists(st.lists(st.sampled_from(["a", "b", '"', ",", "x y", "pos", "neg", ""]), max_size=4), max_size=8))
def test_any_csv_loads_or_gives_one_line(tmp_path_factory, cells):
    folder = tmp_path_factory.mktemp("csv")
    lines = ["text,label"] + ["".join(row) for row in cells]
    (folder / "data.csv").write_text("\n".join(lines) + "\n")
    try:
        splits = load_local_folder(folder)
    except LoraXSError as err:
        assert "\n" not in str(err)
        return
    for ds in (splits.train, splits.test):
        assert all(isinstance(t, str) and t.strip() for t in ds["text"])


def test_a_label_per_row_is_refused_by_client_run_and_the_simulation_alike(
    tmp_path, tiny_bert_dir, monkeypatch, capsys
):
    write_jsonl(tmp_path / "data.jsonl", [{"text": f"text {i}", "label": f"id-{i}"} for i in range(30)])
    with pytest.raises(LoraXSError, match="has a label of its own"):
        load_local_folder(tmp_path)
    from simulations import cli

    monkeypatch.setattr("simulations.ray_simulation.run_ray_simulation", _no_ray)
    code = cli.main(
        [
            "--dataset",
            str(tmp_path),
            "--model",
            tiny_bert_dir,
            "--num-clients",
            "2",
            "--partition",
            "iid",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    assert code == 1 and "has a label of its own" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _no_ray(*_args, **_kwargs):
    raise AssertionError("Ray started although the input was bad")


# -- flags: empty or meaningless values ----------------------------------------------------------


@pytest.mark.parametrize("argv", [["--model", ""], ["--adapter", " "], ["--basis", ""], ["--out", ""]])
def test_client_run_refuses_empty_flag_values(tmp_path, argv, capsys):
    from client.run import main

    with pytest.raises(SystemExit) as stop:
        main(["--data", str(write_reviews(tmp_path / "d")), *argv])
    assert stop.value.code == 2 and "an empty value is not allowed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--client-ranks", ",,"], "client-ranks must be comma-separated integers"),
        (["--labels", " , "], "labels must be comma-separated class names"),
        (["--run-config", "model="], "model must name a model id or folder"),
    ],
)
def test_the_simulation_refuses_meaningless_values_before_ray(tmp_path, monkeypatch, capsys, argv, message):
    from simulations import cli

    monkeypatch.setattr("simulations.ray_simulation.run_ray_simulation", _no_ray)
    code = cli.main([*argv, "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 1 and message in capsys.readouterr().err


def test_the_simulation_refuses_an_empty_model_flag(capsys):
    from simulations import cli

    with pytest.raises(SystemExit) as stop:
        cli.main(["--model", ""])
    assert stop.value.code == 2 and "--model: an empty value is not allowed" in capsys.readouterr().err


def test_meaningless_client_ranks_in_the_config_itself():
    with pytest.raises(LoraXSError, match="client-ranks"):
        FederationConfig(client_ranks=",,")
    assert FederationConfig(client_ranks="2,4,", rank=4).client_rank_list() == [2, 4]


# -- output locations are checked before any work --------------------------------------------------


def test_simulation_out_onto_an_existing_run_refuses_without_force(tmp_path, monkeypatch, capsys, tiny_bert_dir):
    from simulations import cli

    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text("{}")
    monkeypatch.setattr("simulations.ray_simulation.run_ray_simulation", _no_ray)
    assert cli.main(["--out", str(run), "--no-progress"]) == 1
    assert "already holds a run (report.json); pass --force" in capsys.readouterr().err
    assert (run / "report.json").read_text() == "{}"
    started = []
    monkeypatch.setattr(
        "simulations.ray_simulation.run_ray_simulation",
        lambda *a, **k: started.append(1) or (_ for _ in ()).throw(LoraXSError("stop here")),
    )
    assert (
        cli.main(
            [
                "--out",
                str(run),
                "--force",
                "--no-progress",
                "--num-clients",
                "2",
                "--model",
                tiny_bert_dir,
                "--partition",
                "iid",
                "--dataset",
                str(write_reviews(tmp_path / "reviews", 40)),
            ]
        )
        == 1
    )
    assert started == [1]  # with --force it goes on to run


def test_simulation_out_onto_a_file_refuses_before_ray(tmp_path, monkeypatch, capsys):
    from simulations import cli

    (tmp_path / "file").write_text("mine")
    monkeypatch.setattr("simulations.ray_simulation.run_ray_simulation", _no_ray)
    assert cli.main(["--out", str(tmp_path / "file"), "--no-progress"]) == 1
    assert "is a file; give a folder for the run" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "mine"


def test_client_run_into_a_read_only_folder_refuses_before_reading_data(tmp_path, monkeypatch, capsys):
    from client.run import main

    def read_only(**_kwargs):
        raise PermissionError(13, "Permission denied")

    def no_data(*_args, **_kwargs):
        raise AssertionError("the data was read although the output could not be written")

    monkeypatch.setattr("shared.artifacts.blob.tempfile.mkstemp", read_only)
    monkeypatch.setattr("client.personalization.load_local_folder", no_data)
    code = main(["--data", str(write_reviews(tmp_path / "d")), "--out", str(tmp_path / "ro" / "p.safetensors")])
    assert code == 1 and "cannot write to output folder" in capsys.readouterr().err


# -- adapters that cannot be right ----------------------------------------------------------------


def crafted(tiny_bert_dir: str, path: Path, alpha: float, value: float, std: float | None = None) -> Path:
    """An adapter with a valid checksum: every R = `value` (or seeded N(0, std)) at `alpha`."""
    config = LoraXSConfig(rank=RANK, alpha=alpha)
    model, basis = build_adapted_model(tiny_bert_dir, "seq-cls", config, labels=["fresh", "rotten"])
    generator = torch.Generator().manual_seed(0)
    state = adapter_state(model)
    for name in state:
        if name.endswith("lora_R"):
            state[name] = (
                torch.full((RANK, RANK), value) if std is None else torch.randn(RANK, RANK, generator=generator) * std
            )
    save_adapter(path, state, adapter_meta(tiny_bert_dir, "seq-cls", config, basis, ["fresh", "rotten"]))
    return path


def test_alpha_beyond_its_bound_is_refused(tiny_bert_dir, tmp_path):
    path = crafted(tiny_bert_dir, tmp_path / "a.safetensors", alpha=1e6, value=1e4)  # a valid checksum
    with pytest.raises(LoraXSError, match=r"'alpha' must be a finite number in \(0, 1024\]"):
        load_adapter(path)


def test_an_adapter_that_swamps_its_layers_is_refused_and_a_plausible_one_is_not(tiny_bert_dir, tmp_path):
    big = crafted(tiny_bert_dir, tmp_path / "big.safetensors", alpha=1024, value=1e4)
    with pytest.raises(LoraXSError, match="cannot be a trained adapter: it changes layer"):
        open_adapter(read_adapter(big, model=tiny_bert_dir))
    plausible = crafted(tiny_bert_dir, tmp_path / "ok.safetensors", alpha=16, value=0.0, std=1.0)
    opened = open_adapter(read_adapter(plausible, model=tiny_bert_dir))
    effects = relative_effects(opened.model)
    assert 0 < max(effects.values()) < MAX_RELATIVE_EFFECT / 3  # R ~ N(0, 1) at scale 4: well inside
    check_adapter_effect(opened.model, "ok")


def test_the_relative_effect_is_the_spectral_norm_of_delta_w_over_sigma_1(tiny_bert_dir):
    """Golden check against a direct computation on the full (out, in) matrices."""
    config = LoraXSConfig(rank=RANK)
    model, _ = build_adapted_model(tiny_bert_dir, "seq-cls", config, labels=["a", "b"])
    from shared.loraxs.model import adapted_layers

    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in adapted_layers(model).values():
            layer.lora_R.copy_(torch.randn(RANK, RANK, generator=generator))
    for name, effect in relative_effects(model).items():
        layer = adapted_layers(model)[name]
        with torch.no_grad():
            direct = torch.linalg.matrix_norm(layer.delta_weight(), 2) / torch.linalg.matrix_norm(layer.base.weight, 2)
        assert effect == pytest.approx(float(direct), rel=1e-3), name


def test_client_run_refuses_a_crafted_start_adapter_and_writes_nothing(tiny_bert_dir, tmp_path, capsys):
    from client.run import main

    big = crafted(tiny_bert_dir, tmp_path / "big.safetensors", alpha=1024, value=1e4)
    data = write_reviews(tmp_path / "d")
    code = main(["--data", str(data), "--adapter", str(big), "--model", tiny_bert_dir])
    assert code == 1 and "cannot be a trained adapter" in capsys.readouterr().err
    assert not (data / "personal_adapter.safetensors").exists()


def test_client_export_refuses_a_crafted_adapter_and_writes_nothing(tiny_bert_dir, tmp_path):
    from tests.helpers import export_cli

    big = crafted(tiny_bert_dir, tmp_path / "big.safetensors", alpha=1024, value=1e4)
    code, _, err = export_cli(["--adapter", big, "--model", tiny_bert_dir, "--out", tmp_path / "out" / "m.onnx"])
    assert code == 1 and "cannot be a trained adapter" in err
    assert not (tmp_path / "out").exists()


# -- the recipe report cannot contradict itself ----------------------------------------------------


def test_the_recipe_report_names_what_was_kept(capsys):
    """The case a red team found: the probe start beat the given adapter, nothing beat the given
    adapter by the margin, lam = 0 kept it; the report said "the start adapter itself" and
    "start 0.5833, kept 0.4167" at once."""
    from client.personalization import PersonalizationResult
    from client.run import print_report
    from shared.artifacts.adapter_file import AdapterMeta
    from shared.personal_training import PersonalTrainingResult
    from shared.recipe.recipe import kept_words as _kept_words
    from shared.training import EvalResult, TrainResult

    start = "the given adapter + closed-form head"
    recipe = PersonalTrainingResult(
        start=start,
        start_score=-0.6,
        best_score=-0.6,
        improved=False,
        history=[-0.7],
        best_epoch=0,
        training=TrainResult(loss=0.7, examples=40, steps=5, seconds=0.1),
        max_length=32,
        num_fit=40,
        num_val=12,
        frozen_head_score=None,
        lam=0.0,
        lam_scores={0.0: -0.6, 1.0: -0.59},
        measure="loss",
        start_accuracy=0.5833,
        kept_accuracy=0.4167,
        kept=_kept_words(0.0, 0, "the given adapter", start),
    )
    meta = AdapterMeta(
        base_model="m",
        task="seq-cls",
        rank=4,
        alpha=16.0,
        targets=("query",),
        labels=("a", "b"),
        basis_fingerprint="ab" * 32,
    )
    evaluation = EvalResult(loss=0.7, accuracy=0.5, examples=10)
    print_report(
        PersonalizationResult(
            out=Path("p.safetensors"),
            num_bytes=1,
            before=evaluation,
            after=evaluation,
            baselines={},
            recipe=recipe,
            meta=meta,
            factors_source="x",
            num_train=52,
        )
    )
    out = capsys.readouterr().out
    assert "kept lam = 0 (the given adapter itself)" in out
    assert f"start ({start}) 0.5833, kept (the given adapter itself) 0.4167 (note: below the start; nothing beat" in out
    assert "the start adapter itself" not in out and "the adapter written is the given adapter itself" in out
    assert _kept_words(1.0, 3, "scratch", "frozen features + closed-form head") == "epoch 3"
    assert _kept_words(1.0, 0, "the given adapter", start) == f"the start ({start})"
    assert _kept_words(0.0, 3, "scratch", "s") == "the start (s)"
