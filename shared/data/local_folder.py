"""Load a user's own text files from a folder into train/test splits.

Supported files (read only, never written):
  *.jsonl  one JSON object a line: {"text": ..., "label": ...}   (label a string or an int)
  *.csv    a header row with "text" and "label" columns
  *.txt    causal-lm only: one example per non-empty line
For causal-lm, .jsonl and .csv need only the "text" field. Files named train.* and test.* are
used as given when both exist; test.* without a train.* is refused (it would be split and trained
on); otherwise every supported file is read and split 80/20 with a seed. Other files and
subfolders (adapters, a .loraxs/ cache) are ignored, but an entry with a supported suffix that
is not a regular file (a folder, a named pipe, a device) is refused, and so is a CSV row with
more or fewer fields than its header, or a quote left open (with its line number).

Labels are names: integer labels too (0, 3 -> classes "0", "3", in numeric order, never a range),
at least 2 and at most MAX_CLASSES of them, not one a row (client.run and the simulation alike),
all integers or all strings, and a label of the test
file must occur in the train file. The supported files may hold MAX_DATA_BYTES in all.
"""

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shared.artifacts.untrusted_file import open_regular
from shared.data.text_splits import TextSplits, check_task, split_indices, split_train_test
from shared.errors import LoraXSError

if TYPE_CHECKING:  # datasets costs seconds to import; read_local_rows never needs it
    from datasets import Dataset

SUPPORTED_SUFFIXES = {"seq-cls": (".jsonl", ".csv"), "causal-lm": (".txt", ".jsonl", ".csv")}
INTEGER_LABEL = re.compile(r"-?\d{1,18}")
MAX_CLASSES = 1000
MAX_DATA_BYTES = 256 * 2**20

# One example: its text, its label as written in the file (None when the task needs none).
Row = tuple[str, str | int | None]


def infer_task(path: str | Path) -> str:
    """causal-lm when the folder holds *.txt files and no *.jsonl / *.csv, else seq-cls."""
    folder = Path(path).expanduser()
    try:
        suffixes = {p.suffix.lower() for p in folder.iterdir() if p.is_file()}
    except OSError:
        return "seq-cls"  # loading the folder reports what is wrong with it
    if ".txt" in suffixes and not suffixes & set(SUPPORTED_SUFFIXES["seq-cls"]):
        return "causal-lm"
    return "seq-cls"


@dataclass(frozen=True)
class FolderRows:
    """A folder's train and test examples as plain lists (no datasets): what a device reads."""

    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]
    labels: list[str]


def read_local_rows(path: str | Path, seed: int = 0, test_fraction: float = 0.2) -> FolderRows:
    """A classification folder as `load_local_folder(path, "seq-cls", seed)` reads it, the same
    rows in the same order, without importing datasets."""
    folder = Path(path).expanduser()
    files = _supported_files(folder, "seq-cls")
    train_files = [f for f in files if f.stem.lower() == "train"]
    test_files = [f for f in files if f.stem.lower() == "test"]
    _refuse_test_without_train(folder, train_files, test_files)
    if train_files and test_files:
        train_rows = [row for f in train_files for row in _read_file(f, True)]
        test_rows = [row for f in test_files for row in _read_file(f, True)]
        _check_split_rows(folder, train_rows, test_rows)
        labels, ids = _label_ids(train_rows + test_rows)
        cut = len(train_rows)
        texts = [text for text, _ in train_rows + test_rows]
        return FolderRows(texts[:cut], ids[:cut], texts[cut:], ids[cut:], labels)
    rows = [row for f in files for row in _read_file(f, True)]
    if len(rows) < 2:
        raise LoraXSError(f"{folder} holds {len(rows)} example(s); at least 2 are needed")
    labels, ids = _label_ids(rows)
    train, test = split_indices(len(rows), test_fraction, seed)
    return FolderRows(
        [rows[i][0] for i in train], [ids[i] for i in train], [rows[i][0] for i in test], [ids[i] for i in test], labels
    )


def _refuse_test_without_train(folder: Path, train_files: list[Path], test_files: list[Path]) -> None:
    if test_files and not train_files:
        raise LoraXSError(
            f"{folder} holds {test_files[0].name} but no train file: add train.* (a test file is "
            "never split and trained on), or rename it to use the 80/20 split"
        )


def _check_split_rows(folder: Path, train_rows: list[Row], test_rows: list[Row], needs_label: bool = True) -> None:
    for rows, kind in ((train_rows, "train"), (test_rows, "test")):
        if not rows:
            raise LoraXSError(f"{folder}: the {kind}.* files hold no examples")
    if needs_label:
        unseen = sorted({str(label) for _, label in test_rows} - {str(label) for _, label in train_rows})
        if unseen:
            raise LoraXSError(
                f"{folder}: label(s) {', '.join(repr(u) for u in unseen[:5])} occur only in the "
                "test files; every label needs training examples"
            )


def load_local_folder(path: str | Path, task: str = "seq-cls", seed: int = 0, test_fraction: float = 0.2) -> TextSplits:
    """Read the supported files of `path` into a TextSplits for `task`."""
    check_task(task)
    folder = Path(path).expanduser()
    files = _supported_files(folder, task)
    train_files = [f for f in files if f.stem.lower() == "train"]
    test_files = [f for f in files if f.stem.lower() == "test"]
    needs_label = task == "seq-cls"

    _refuse_test_without_train(folder, train_files, test_files)
    if train_files and test_files:
        train_rows = [row for f in train_files for row in _read_file(f, needs_label)]
        test_rows = [row for f in test_files for row in _read_file(f, needs_label)]
        _check_split_rows(folder, train_rows, test_rows, needs_label)
        labels, train, test = _to_datasets(train_rows, test_rows, needs_label)
        return TextSplits(train=train, test=test, labels=labels)

    rows = [row for f in files for row in _read_file(f, needs_label)]
    if len(rows) < 2:
        raise LoraXSError(f"{folder} holds {len(rows)} example(s); at least 2 are needed")
    labels, full, _ = _to_datasets(rows, [], needs_label)
    train, test = split_train_test(full, test_fraction=test_fraction, seed=seed)
    return TextSplits(train=train, test=test, labels=labels)


def _supported_files(folder: Path, task: str) -> list[Path]:
    suffixes = SUPPORTED_SUFFIXES[task]
    try:
        if not folder.exists():
            raise LoraXSError(f"dataset folder not found: {folder}")
        if not folder.is_dir():
            raise LoraXSError(f"{folder} is not a directory (expected a folder of text files)")
        entries = sorted(folder.iterdir())
        if not entries:
            raise LoraXSError(f"dataset folder {folder} is empty")
        candidates = [e for e in entries if e.suffix.lower() in suffixes]
        odd = [e for e in candidates if not e.is_file()]
        if odd:
            raise LoraXSError(
                f"{odd[0]} is not a regular file (a folder, a named pipe or a device?); a data folder holds text files"
            )
        files = candidates
        total = sum(f.stat().st_size for f in files)
    except OSError as error:
        raise LoraXSError(f"cannot read dataset folder {folder}: {error.strerror or error}") from None
    if not files:
        raise LoraXSError(
            f"no supported data files in {folder} for task {task} (supported: {', '.join('*' + s for s in suffixes)})"
        )
    if total > MAX_DATA_BYTES:
        raise LoraXSError(
            f"the data files in {folder} hold {total / 2**20:.0f} MiB, more than the "
            f"{MAX_DATA_BYTES // 2**20} MiB allowed"
        )
    return files


def _read_file(file: Path, needs_label: bool) -> list[Row]:
    try:
        if file.suffix.lower() == ".jsonl":
            return _read_jsonl(file, needs_label)
        if file.suffix.lower() == ".csv":
            return _read_csv(file, needs_label)
        return _read_txt(file)
    except UnicodeDecodeError:
        raise LoraXSError(f"{file} is not UTF-8 text") from None
    except OSError as error:
        raise LoraXSError(f"cannot read {file}: {error.strerror or error}") from None
    except csv.Error as error:
        raise LoraXSError(f"{file}: malformed CSV ({error})") from None


def _open_text(file: Path, newline: str | None = None) -> io.TextIOWrapper:
    """A regular file only (never blocks on a pipe), at most MAX_DATA_BYTES."""
    return io.TextIOWrapper(open_regular(file, "data file", MAX_DATA_BYTES), encoding="utf-8-sig", newline=newline)


def _read_jsonl(file: Path, needs_label: bool) -> list[Row]:
    rows = []
    with _open_text(file) as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{file}:{line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise LoraXSError(f"{where}: malformed JSON ({error.msg})") from None
            except (ValueError, RecursionError) as error:  # a number of 4300+ digits, deep nesting
                raise LoraXSError(f"{where}: unusable JSON ({type(error).__name__})") from None
            if not isinstance(record, dict):
                raise LoraXSError(f"{where}: expected a JSON object with 'text' and 'label'")
            rows.append(_checked_row(record.get("text"), record.get("label"), where, needs_label))
    return rows


def _read_csv(file: Path, needs_label: bool) -> list[Row]:
    rows = []
    with _open_text(file, newline="") as handle:
        reader = csv.DictReader(handle, strict=True)
        columns = reader.fieldnames or []
        needed = ["text", "label"] if needs_label else ["text"]
        missing = [c for c in needed if c not in columns]
        if missing:
            raise LoraXSError(
                f"{file}: the CSV header needs the columns {', '.join(needed)} (missing: {', '.join(missing)})"
            )
        doubled = [c for c in ("text", "label") if columns.count(c) > 1]
        if doubled:
            raise LoraXSError(f"{file}: the CSV header names the column(s) {', '.join(doubled)} more than once")
        for record in _csv_records(reader, file):
            label = record.get("label")
            if label is not None and INTEGER_LABEL.fullmatch(label.strip()):
                label = int(label)
            elif label is not None and not label.strip():
                label = None
            where = f"{file}:{reader.line_num}"
            rows.append(_checked_row(record.get("text"), label, where, needs_label))
    return rows


def _csv_records(reader: csv.DictReader, file: Path):
    """The rows of `reader`; a row with more or fewer fields than the header, or a quote left
    open, is one LoraXSError naming its line."""
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            what = "a quote opened here is never closed" if "end of data" in str(error) else f"malformed CSV ({error})"
            raise LoraXSError(f"{file}:{start}: {what}") from None
        if None in record or None in record.values():
            fields = sum(v is not None for k, v in record.items() if k is not None) + len(record.get(None) or [])
            raise LoraXSError(
                f"{file}:{reader.line_num}: {fields} field(s), but the header has {len(reader.fieldnames)}"
            )
        yield record


def _read_txt(file: Path) -> list[Row]:
    with _open_text(file) as lines:
        return [(line.rstrip("\r\n"), None) for line in lines if line.strip()]


def _checked_row(text, label, where: str, needs_label: bool) -> Row:
    if text is None:
        raise LoraXSError(f"{where}: missing 'text'")
    if not isinstance(text, str):
        raise LoraXSError(f"{where}: 'text' must be a string, got {type(text).__name__}")
    if not text.strip():
        raise LoraXSError(f"{where}: empty text")
    if not needs_label:
        return text, None
    if label is None:
        raise LoraXSError(f"{where}: missing 'label'")
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise LoraXSError(f"{where}: 'label' must be a string or an integer, got {label!r}")
    if isinstance(label, int) and label < 0:
        raise LoraXSError(f"{where}: integer labels must be >= 0, got {label}")
    if isinstance(label, str) and not label.strip():
        raise LoraXSError(f"{where}: empty label")
    return text, label


def _to_datasets(
    train_rows: list[Row], test_rows: list[Row], needs_label: bool
) -> tuple[list[str] | None, "Dataset", "Dataset | None"]:
    """Turn rows into datasets with label ids shared by train and test, plus the label names."""
    from datasets import Dataset

    rows = train_rows + test_rows
    columns: dict[str, list] = {"text": [text for text, _ in rows]}
    labels = None
    if needs_label:
        labels, columns["label"] = _label_ids(rows)

    cut = len(train_rows)
    train = Dataset.from_dict({name: values[:cut] for name, values in columns.items()})
    test = Dataset.from_dict({name: values[cut:] for name, values in columns.items()})
    return labels, train, test if test_rows else None


def _label_ids(rows: list[Row]) -> tuple[list[str], list[int]]:
    """(class names, each row's class id): integers in numeric order, strings in text order."""
    raw_labels = [label for _, label in rows]
    kinds = {isinstance(label, int) for label in raw_labels}
    if len(kinds) > 1:
        raise LoraXSError('the labels mix integers and strings (e.g. 1 and "pos"); use one kind')
    distinct = sorted(set(raw_labels))
    if len(distinct) < 2:
        raise LoraXSError(f"classification needs at least 2 labels; the files hold only {str(distinct[0])[:80]!r}")
    if len(distinct) > MAX_CLASSES:
        raise LoraXSError(f"the files hold {len(distinct)} distinct labels, more than the {MAX_CLASSES} allowed")
    if len(raw_labels) == len(distinct):
        raise LoraXSError(
            f"every one of the {len(raw_labels)} examples has a label of its own: a classifier "
            "needs several examples of a label (is the label column an id?)"
        )
    id_of_label = {label: i for i, label in enumerate(distinct)}
    return [str(label) for label in distinct], [id_of_label[label] for label in raw_labels]
