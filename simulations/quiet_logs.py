"""Keep a simulation's console readable: warnings and errors, one progress bar, no spam.

Third-party progress bars are switched off by TQDM_DISABLE, which tqdm reads when it is first
imported: `simulations/cli.py` sets it before any import (our own bar passes disable=False).
"""

import logging
import warnings
from contextlib import contextmanager

NOISY_FLOWER_LINES = ("Federated evaluation will be skipped", "run_simulation` function is deprecated")


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(line in text for line in NOISY_FLOWER_LINES)


@contextmanager
def quiet_logs():
    """Flower at WARNING (minus two known-harmless lines), deprecation warnings off."""
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
        flower.setLevel(old_level)
        for handler in flower.handlers:
            handler.removeFilter(drop)
