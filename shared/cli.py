"""How every command-line entry point ends: a user-caused error is one line on stderr and a
non-zero exit, Ctrl-C is "interrupted" and 130, never a traceback."""

import sys
from collections.abc import Callable

from shared.errors import LoraXSError

USER_ERROR_EXIT = 1
INTERRUPTED_EXIT = 130


def run_cli(work: Callable[[], int], prog: str = "", user_error_exit: int = USER_ERROR_EXIT) -> int:
    """Runs `work`; LoraXSError -> "[prog: ]error: <one line>" and `user_error_exit`.

    Every command exits 1 on a user error except `flower-simulation`, which has always exited 2
    (argparse's code for bad flags) and keeps it: scripts and its tests rely on it."""
    prefix = f"{prog}: " if prog else ""
    try:
        return work()
    except LoraXSError as err:
        print(f"{prefix}error: {err}", file=sys.stderr)
        return user_error_exit
    except KeyboardInterrupt:
        print(f"{prefix}interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
