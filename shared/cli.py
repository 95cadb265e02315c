"""How every command-line entry point ends: a user-caused error is one line on stderr and exit 1,
Ctrl-C is "interrupted" and 130, never a traceback. Exit 2 is left to argparse (unknown or
malformed flags), the same for every command.

As a last resort, an OSError, MemoryError, RecursionError or ValueError that escaped (outside input
the specific checks missed) is one line and exit 1 too; the specific causes are fixed where found."""

import sys
from collections.abc import Callable

from shared.errors import LoraXSError

USER_ERROR_EXIT = 1
INTERRUPTED_EXIT = 130
LAST_RESORT = (OSError, MemoryError, RecursionError, ValueError)


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:500] if lines else type(err).__name__


def run_cli(work: Callable[[], int], prog: str = "") -> int:
    """Runs `work`; LoraXSError -> "[prog: ]error: <one line>" and exit 1."""
    prefix = f"{prog}: " if prog else ""
    try:
        return work()
    except LoraXSError as err:
        print(f"{prefix}error: {_one_line(err)}", file=sys.stderr)
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        print(f"{prefix}interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    except LAST_RESORT as err:
        what = "out of memory" if isinstance(err, MemoryError) else (
            "input nested too deeply" if isinstance(err, RecursionError) else type(err).__name__)
        print(f"{prefix}error: {what}: {_one_line(err)}", file=sys.stderr)
        return USER_ERROR_EXIT
