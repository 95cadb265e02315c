"""Keep a simulation's console readable: warnings and errors, one progress bar, no spam."""

import logging
import os
import warnings
from contextlib import contextmanager

NOISY_FLOWER_LINES = ("Federated evaluation will be skipped", "run_simulation` function is deprecated")


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(line in text for line in NOISY_FLOWER_LINES)


@contextmanager
def quiet_logs():
    """Flower and Ray at WARNING (minus two known-harmless lines); no third-party tqdm bars."""
    old_tqdm = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # e.g. flwr-datasets' partitioner; our own bar opts back in
    flower = logging.getLogger("flwr")
    old_level, drop = flower.level, _DropLines()
    flower.setLevel(logging.WARNING)
    for handler in flower.handlers:
        handler.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        if old_tqdm is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old_tqdm
        flower.setLevel(old_level)
        for handler in flower.handlers:
            handler.removeFilter(drop)
