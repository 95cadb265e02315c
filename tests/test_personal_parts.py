"""The lexical part and the temperature of a personal model (shared/lexical.py, shared/calibration.py,
shared/personal_output.py): exact math against independent computations, the file format's checks,
and one tiny end-to-end run: client.run -> adapter file -> client.export (merged, int8,
adapter-as-input, .onnx_adapter) -> client.predict, all giving PyTorch's probabilities.
"""

import json
import math

import numpy as np
import pytest
import torch

from shared.calibration import expected_calibration_error, fit_temperature, nll
from shared.errors import LoraXSError
from shared.lexical import (
    BIGRAM_SLOTS,
    STRIDE,
    LexicalHead,
    decode_ids,
    encode_ids,
    features,
    fit_vocabulary,
    lexical_logits,
    slot_clashes,
    softmax,
)
from shared.personal_output import OutputParts, PersonalOutput, parts_meta, parts_state, split_parts

VOCAB = 50
SPECIAL = {0, 1, 2}  # pad, cls, sep in these tests


def random_batch(rng, batch=6, length=12):
    """(B, T) ids with repeats, special ids at both ends, right padding; and the mask."""
    ids = rng.integers(3, 15, size=(batch, length))  # few ids: many repeats
    mask = np.ones_like(ids)
    for row in range(batch):
        real = rng.integers(3, length + 1)
        ids[row, 0], ids[row, real - 1] = 1, 2
        ids[row, real:], mask[row, real:] = 0, 0
    return ids.astype(np.int64), mask.astype(np.int64)


def pair(first: int, second: int) -> int:
    return (first + 1) * STRIDE + second


def random_head(rng, classes=3):
    """8 wordpieces and 8 pairs of the ids `random_batch` draws (so most occur, some repeated)."""
    pieces = rng.choice(np.arange(3, 15), size=8, replace=False)
    pairs = [pair(int(a), int(b)) for a, b in rng.choice(np.arange(3, 15), size=(8, 2))]
    ids = np.array(sorted(set(pieces.tolist()) | set(pairs)), dtype=np.int64)
    return LexicalHead(
        ids,
        rng.uniform(1, 3, size=len(ids)).astype(np.float32),
        rng.normal(size=(classes, len(ids))).astype(np.float32),
        rng.normal(size=classes).astype(np.float32),
    )


def test_features_are_sublinear_l2_normalised_tfidf_of_wordpieces_and_pairs():
    ids, idf = np.array([5, 7, pair(5, 5), pair(5, 7)]), np.array([2.0, 1.0, 3.0, 0.5], dtype=np.float32)
    x = features([np.array([1, 5, 5, 7, 9, 5, 5, 2])], ids, idf)  # 9 has no weight, 1 and 2 are special
    raw = np.array([2.0 * (1 + math.log(4)), 1.0, 3.0 * (1 + math.log(2)), 0.5])  # (5, 5) twice, (5, 7) once
    np.testing.assert_allclose(x[0], raw / np.linalg.norm(raw), rtol=1e-12)


def test_vocabulary_keeps_terms_in_enough_texts_and_smooth_idf():
    texts = [np.array([1, 5, 6, 2]), np.array([1, 5, 6, 5, 2]), np.array([1, 7, 6, 2])]
    ids, idf = fit_vocabulary(texts, skip_ids={1, 2}, min_df=2)
    assert ids.tolist() == [5, 6, pair(5, 6)]  # (1, 5) and (6, 2) hold a special token
    np.testing.assert_allclose(idf, [math.log(4 / 3) + 1, 1.0, math.log(4 / 3) + 1], rtol=1e-6)  # 6 is in all 3


def test_vocabulary_keeps_one_pair_per_graph_slot_the_one_in_more_texts():
    first, second = divmod(pair(5, 6) + BIGRAM_SLOTS, STRIDE)  # another real pair in the same slot
    clash_pair = (first - 1, second)
    texts = [np.array([5, 6])] * 3 + [np.array(clash_pair)] * 2
    ids, _ = fit_vocabulary(texts, skip_ids=set(), min_df=2)
    kept_pairs = [v for v in ids.tolist() if v >= STRIDE]
    assert kept_pairs == [pair(5, 6)]  # same slot, in 3 texts against 2
    assert slot_clashes(np.array([pair(5, 6), pair(*clash_pair)])) == 1


def test_logits_by_position_equal_the_feature_form():
    rng = np.random.default_rng(0)
    ids, mask = random_batch(rng)
    head = random_head(rng)
    texts = [row[m.astype(bool)] for row, m in zip(ids, mask)]
    expected = features(texts, head.ids, head.idf) @ head.weight.T + head.bias  # (B, C)
    np.testing.assert_allclose(lexical_logits(ids, mask, head), expected, atol=1e-5)


def test_torch_output_matches_numpy_with_the_temperature():
    rng = np.random.default_rng(1)
    ids, mask = random_batch(rng)
    head, encoder = random_head(rng), rng.normal(size=(len(ids), 3)).astype(np.float32)
    output = PersonalOutput(OutputParts(head, 2.5), VOCAB, 3)
    with torch.no_grad():
        got = output(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(encoder)).numpy()
    np.testing.assert_allclose(got, (encoder + lexical_logits(ids, mask, head)) / 2.5, atol=1e-5)


def test_temperature_recovers_the_one_that_made_the_labels():
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=4.0, size=(4000, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(logits / 2.0)])  # over-confident by 2x
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(2.0, rel=0.1)
    assert nll(logits, labels, t) < nll(logits, labels)
    assert expected_calibration_error(logits, labels, t) < expected_calibration_error(logits, labels)


def test_temperature_never_worse_than_none_on_its_data():
    logits, labels = np.array([[2.0, 0.0], [0.0, 2.0]]), np.array([0, 1])
    t = fit_temperature(logits, labels)
    assert nll(logits, labels, t) <= nll(logits, labels)


def test_ece_of_a_hand_computed_example():
    # top probabilities 0.9, 0.9 (one right), 0.6 (right): bins [0.9, 0.967) and [0.6, 0.667)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
    labels = np.array([0, 1, 0])
    expected = 2 / 3 * abs(0.5 - 0.9) + 1 / 3 * abs(1.0 - 0.6)
    assert expected_calibration_error(np.log(probs), labels) == pytest.approx(expected)


def test_ece_floor_is_the_noise_of_a_calibrated_model_and_shrinks_with_more_texts():
    from shared.calibration import sampling_floor

    rng = np.random.default_rng(0)
    few, many = rng.normal(size=(100, 2)) * 2, rng.normal(size=(10_000, 2)) * 2
    assert sampling_floor(few) > 0.04 > 0.01 > sampling_floor(many)  # about 0.08 and 0.008
    sure = np.array([[30.0, 0.0]] * 50)  # right with probability ~1: nothing to miss
    assert sampling_floor(sure) < 1e-9
    # a model that is calibrated by construction scores about its floor
    logits = rng.normal(size=(400, 2)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    eces = [expected_calibration_error(logits, (rng.random(400) > probs[:, 0]).astype(int)) for _ in range(200)]
    assert abs(np.mean(eces) - sampling_floor(logits)) < 0.01


def test_ids_round_trip_and_bad_ids_are_rejected():
    ids = np.array([3, 17, 30521], dtype=np.int64)
    np.testing.assert_array_equal(decode_ids(encode_ids(ids), 3, 30522), ids)
    with_pairs = np.array([3, 17, pair(17, 3), pair(30521, 30521)], dtype=np.int64)  # keys past 2**32: uint64
    assert len(encode_ids(with_pairs)) > len(encode_ids(ids))
    np.testing.assert_array_equal(decode_ids(encode_ids(with_pairs), 4, 30522), with_pairs)
    clashing = np.array([pair(5, 6), pair(5, 6) + BIGRAM_SLOTS], dtype=np.int64)
    for text, count, fragment in [
        (encode_ids(ids), 2, "not 4 or 8"),
        (encode_ids(ids[::-1]), 3, "increasing"),
        ("not base64!", 3, "base64"),
        (7, 3, "base64 string"),
        (encode_ids(ids), 3, "beyond"),
        (encode_ids(with_pairs), 4, "beyond"),
        (encode_ids(clashing), 2, "share a slot"),
        (encode_ids(np.array([(STRIDE + 2) * STRIDE])), 1, "beyond any term"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            decode_ids(text, count, 30000 if fragment == "beyond" else None)


def terms(state) -> int:
    return len(state["lexical.idf"])


def stored_parts(rng=None):
    head = random_head(rng or np.random.default_rng(4))
    parts = OutputParts(head, 1.7)
    return parts_state(parts), parts_meta(parts), parts


def test_parts_round_trip_through_the_file_entries():
    state, meta, parts = stored_parts()
    rest, read = split_parts({"classifier.bias": torch.zeros(3), **state}, meta, 3, "f")
    assert set(rest) == {"classifier.bias"}
    assert read.temperature == pytest.approx(1.7)
    np.testing.assert_array_equal(read.lexical.ids, parts.lexical.ids)
    np.testing.assert_array_equal(read.lexical.weight, parts.lexical.weight)


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda s, m: m.update(temperature="0"), "temperature"),
        (lambda s, m: m.update(temperature="nan"), "temperature"),
        (lambda s, m: m.update(temperature="warm"), "not a number"),
        (lambda s, m: m.pop("lexical_ids"), "needs"),
        (lambda s, m: s.pop("lexical.idf"), "needs"),
        (
            lambda s, m: s.update({"lexical.weight": torch.zeros(2, terms(s)), "lexical.bias": torch.zeros(2)}),
            "classes",
        ),
        (lambda s, m: s.update({"lexical.weight": torch.zeros(3, terms(s) - 1)}), "shapes"),
        (lambda s, m: s.update({"lexical.idf": -torch.ones(terms(s))}), "negative"),
        (lambda s, m: m.update(lexical_ids=encode_ids(np.arange(3, 10))), "28 bytes"),
    ],
)
def test_malformed_parts_are_one_clear_error(change, fragment):
    state, meta, _ = stored_parts()
    change(state, meta)
    with pytest.raises(LoraXSError, match=fragment):
        split_parts(state, meta, 3, "personal.safetensors")


def test_hostile_part_entries_only_ever_raise_the_one_error_type():
    rng = np.random.default_rng(5)
    values = ["", "1e400", "-1", "[]", "{}", "AAAA", "////", "0.5", "x" * 1000, encode_ids(np.array([5]))]
    for _ in range(200):
        state, meta, _ = stored_parts(rng)
        meta["temperature"], meta["lexical_ids"] = rng.choice(values), rng.choice(values)
        name = rng.choice(["lexical.idf", "lexical.weight", "lexical.bias"])
        state[name] = torch.from_numpy(rng.normal(size=tuple(rng.integers(0, 4, size=rng.integers(0, 3))))).float()
        try:
            split_parts(state, meta, 3, "f")
        except LoraXSError:
            pass


# --- end to end: client.run -> adapter file -> export -> predict ------------------------------

WORDS = {"pos": ["splendid", "marvellous", "delightful"], "neg": ["dreadful", "tedious", "clumsy"]}


@pytest.fixture(scope="module")
def personal(tiny_bert_dir, tmp_path_factory):
    """A tiny personal adapter trained on a folder where one word decides the label."""
    from client.run import main

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORAXS_CACHE", str(tmp_path_factory.mktemp("cache")))
        folder = tmp_path_factory.mktemp("words")
        rng = np.random.default_rng(0)
        filler = ["the", "a", "film", "story", "was", "quite", "and", "it", "then", "still"]
        rows = []
        for i in range(120):
            label = ["pos", "neg"][i % 2]
            words = list(rng.choice(filler, size=6)) + [WORDS[label][int(rng.integers(3))]]
            rng.shuffle(words)
            rows.append({"text": " ".join(words), "label": label})
        (folder / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["--data", str(folder), "--model", tiny_bert_dir, "--rank", "4", "--epochs", "1"])
        assert code == 0
        yield {
            "folder": folder,
            "adapter": folder / "personal_adapter.safetensors",
            "stdout": out.getvalue(),
            "model_dir": tiny_bert_dir,
            "patch": patch,
        }


def test_client_run_says_which_parts_it_kept_and_why(personal):
    out = personal["stdout"]
    assert "parts kept: encoder" in out and "lexical part" in out and "temperature" in out
    assert "held-out calibration" in out and "ECE (15 bins)" in out


def test_the_file_holds_the_parts_and_the_federation_state_does_not(personal):
    from shared.artifacts.open_adapter import open_adapter, read_adapter
    from shared.loraxs.model import adapter_state

    adapter = read_adapter(personal["adapter"], model=personal["model_dir"])
    assert not any(name.startswith("lexical.") for name in adapter.state)
    assert adapter.parts.lexical is not None, personal["stdout"]  # a word decides the label: kept
    assert (adapter.parts.lexical.ids >= STRIDE).any()  # it weighs wordpiece pairs too (so the graphs must)
    opened = open_adapter(adapter, data_dir=personal["folder"])
    assert set(adapter_state(opened.model)) == set(adapter.state)  # what a federation moves: R and the head only


def test_joint_lexical_trains_the_encoder_around_the_lexical_part(personal, tmp_path, capsys):
    from client.run import main
    from shared.artifacts.open_adapter import read_adapter

    out = tmp_path / "joint.safetensors"
    args = ["--data", str(personal["folder"]), "--model", personal["model_dir"], "--rank", "4", "--epochs", "1"]
    assert main([*args, "--out", str(out), "--joint-lexical"]) == 0
    said = capsys.readouterr().out
    assert "chosen on the start's validation logits, then R and the head trained around it" in said, said
    assert read_adapter(out, model=personal["model_dir"]).parts.lexical is not None
    assert main([*args, "--out", str(tmp_path / "off.safetensors"), "--joint-lexical", "--no-lexical"]) == 0
    assert "lexical part: off (--no-lexical)" in capsys.readouterr().out


def test_export_and_predict_give_pytorchs_calibrated_probabilities(personal, tmp_path):
    from client.export import main as export_main
    from client.predict import open_model_folder, predict
    from shared.artifacts.adapter_file import load_adapter, save_adapter
    from shared.artifacts.open_adapter import open_adapter, read_adapter
    from shared.base_models import load_tokenizer
    from shared.personal_output import PersonalClassifier

    # the tiny random BERT's closed-form head is huge (weights ~1e3 on separable words), which
    # scales float32 rounding past the fp32 limit; a moderate seeded head keeps the check meaningful
    state, meta = load_adapter(personal["adapter"])
    generator = torch.Generator().manual_seed(0)
    state["classifier.weight"] = torch.randn(state["classifier.weight"].shape, generator=generator)
    state["classifier.bias"] = torch.zeros_like(state["classifier.bias"])
    path = tmp_path / "personal.safetensors"
    save_adapter(path, state, meta)
    personal = dict(personal, adapter=path)
    out = tmp_path / "export" / "model.onnx"
    code = export_main(
        [
            "--adapter",
            str(personal["adapter"]),
            "--model",
            personal["model_dir"],
            "--out",
            str(out),
            "--quantize",
            "int8",
            "--adapter-as-input",
            "--onnx-adapter",
            "--repeats",
            "1",
            "--data",
            str(personal["folder"]),
        ]
    )
    assert code == 0
    description = json.loads((out.parent / "model.export.json").read_text())
    assert description["personal_output"]["temperature"] != 1.0
    adapter = read_adapter(personal["adapter"], model=personal["model_dir"])
    model = PersonalClassifier(open_adapter(adapter, data_dir=personal["folder"]).model, adapter.parts).eval()
    texts = ["the film was splendid", "a tedious and clumsy story", "it was quite", "marvellous dreadful film"]
    encoded = load_tokenizer(personal["model_dir"])(
        texts, padding=True, truncation=True, max_length=description["max_length"], return_tensors="pt"
    )
    with torch.no_grad():
        probs = torch.softmax(model(**encoded).logits, -1).numpy()  # (B, C)
    labels = description["labels"]
    expected = [(labels[i], float(p[i])) for p, i in zip(probs, probs.argmax(-1))]
    folder = open_model_folder(out.parent)
    onnx_adapter = out.parent / (personal["adapter"].stem + ".onnx_adapter")
    for got in (predict(folder, texts), predict(folder, texts, adapter_path=str(onnx_adapter))):
        assert [g[0] for g in got] == [e[0] for e in expected]
        np.testing.assert_allclose([g[1] for g in got], [e[1] for e in expected], atol=1e-4)
    int8 = predict(folder, texts, int8=True)
    np.testing.assert_allclose([g[1] for g in int8], [e[1] for e in expected], atol=0.05)
    import onnx

    quantized = onnx.load(str(out.parent / "model.int8.onnx"), load_external_data=False)
    kinds = {init.name: init.data_type for init in quantized.graph.initializer}
    head = [name for name in kinds if name.startswith("model.classifier.weight")]  # (or its transpose)
    assert head and all(kinds[name] == onnx.TensorProto.FLOAT for name in head), head  # fp32 behind the parts


# --- the benchmark's goals ------------------------------------------------------------------


def test_goals_judge_the_seeded_means_against_the_best_baseline():
    from benchmarks.personal_parts import folder_summary, goals

    def loraxs(accuracy, ece_after, nll=(0.5, 0.4), int8=(0.80, 0.795)):
        return {
            "accuracy": accuracy,
            "encoder_accuracy": accuracy,
            "lexical_mix": 1.0,
            "calibration": {
                "nll_before": nll[0],
                "nll_after": nll[1],
                "ece_before": 0.1,
                "ece_after": ece_after,
                "temperature": 1.5,
            },
            "onnx_accuracy": {"fp32": int8[0], "int8": int8[1]},
        }

    def entry(ours: dict, best: float) -> dict:
        methods = {"loraxs": ours, "tfidf": {"accuracy": best}, "frozen": {"accuracy": best - 0.1}}
        return {"methods": methods, "source": {m: "this run" for m in methods}}

    summaries = [
        folder_summary("a", entry(loraxs(0.805, 0.04), 0.80)),  # above, calibrated
        folder_summary("b", entry(loraxs(0.795, 0.06, nll=(0.4, 0.41)), 0.80)),  # within 1 point only
        folder_summary("c", entry(loraxs(0.70, 0.03, int8=(0.70, 0.68)), 0.80)),
    ]  # 10 points below
    judged = [(g["met"], g["measured"]) for g in goals(summaries)]
    assert judged == [
        (False, "2 of 3 folders"),  # within 1 point of the best: a, b
        (False, "1 of 3 folders"),  # strictly above: a
        (False, "2 of 3 folders"),  # ECE <= 0.05: a, c
        (False, "2 of 3 folders"),  # NLL never worse: a, c
        (False, "2 of 3 folders"),
    ]  # int8 within 1 point: a, b


def test_part_flags_belong_to_local_personalization():
    from client.run import check_mode_flags, parse_args, personalization_config

    config = personalization_config(parse_args(["--data", "d", "--no-lexical", "--no-calibration"]))
    assert not config.lexical and not config.calibrate
    assert personalization_config(parse_args(["--data", "d"])).lexical
    with pytest.raises(LoraXSError, match="--no-lexical: only for local personalization"):
        check_mode_flags(parse_args(["--data", "d", "--superlink", "h:1", "--no-lexical"]))
