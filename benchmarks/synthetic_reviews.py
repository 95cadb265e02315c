"""A data folder of deterministic review-like texts, for the deployment benchmarks (no download)."""

import json
from pathlib import Path

LABELS = ["0", "1"]  # the folder's integer labels, as names


def write_synthetic_reviews(folder: Path, n: int) -> Path:
    """`n` texts of 20-40 words in `folder`/reviews.jsonl, labels alternating 0, 1."""
    good = "wonderful moving clever funny superb gripping charming fresh".split()
    bad = "boring clumsy dull predictable tedious flat lifeless stale".split()
    filler = "the film story acting cast plot scenes director and with a of in its".split()
    texts, labels = [], []
    for i in range(n):
        mood = good if i % 2 else bad
        words = [filler[(i * 7 + j) % len(filler)] if j % 3 else mood[(i + j) % len(mood)] for j in range(20 + i % 21)]
        texts.append(" ".join(words))
        labels.append(i % 2)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "reviews.jsonl", "w") as out:
        out.writelines(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels))
    return folder
