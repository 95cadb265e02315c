"""How a command-line entry point ends: a user-caused error is one line on stderr and exit 1."""

import sys
from collections.abc import Callable

from shared.errors import LoraXSError


def run_cli(work: Callable[[], int]) -> int:
    """Runs `work`; LoraXSError -> "error: <one line>" and 1, Ctrl-C -> "interrupted" and 130."""
    try:
        return work()
    except LoraXSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
