"""How every command-line entry point ends: a user-caused error is one line on stderr and exit 1,
Ctrl-C is "interrupted" and 130, SIGTERM a clean stop and 143 (shared/signals.py: cleanup runs
first), never a traceback. Exit 2 is left to argparse (unknown or
malformed flags), the same for every command.

As a last resort, an OSError, MemoryError, RecursionError or ValueError that escaped (outside input
the specific checks missed) is one line and exit 1 too; the specific causes are fixed where found."""

import sys
from collections.abc import Callable

from shared.errors import LoraXSError
from shared.signals import Stopped, stop_on_signals

USER_ERROR_EXIT = 1
INTERRUPTED_EXIT = 130
STOPPED_EXIT = 143  # SIGTERM
LAST_RESORT = (OSError, MemoryError, RecursionError, ValueError)


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:500] if lines else type(err).__name__


def run_cli(work: Callable[[], int], prog: str = "") -> int:
    """Runs `work`; LoraXSError -> "[prog: ]error: <one line>" and exit 1."""
    prefix = f"{prog}: " if prog else ""
    try:
        with stop_on_signals():
            return work()
    except Stopped as stop:
        print(f"{prefix}{stop}; stopped cleanly", file=sys.stderr)
        return stop.exit_code
    except LoraXSError as err:
        print(f"{prefix}error: {_one_line(err)}", file=sys.stderr)
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        print(f"{prefix}interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    except LAST_RESORT as err:
        what = (
            "out of memory"
            if isinstance(err, MemoryError)
            else ("input nested too deeply" if isinstance(err, RecursionError) else type(err).__name__)
        )
        print(f"{prefix}error: {what}: {_one_line(err)}", file=sys.stderr)
        return USER_ERROR_EXIT


def refuse_blank_values(parser, args) -> None:
    """A flag given an empty or blank value (`--model ''`) is argparse's error (exit 2): it never
    silently means the default, the current folder or "none"."""
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        values = value if isinstance(value, list) else [value]
        if value != action.default and any(isinstance(v, str) and not v.strip() for v in values):
            name = "/".join(action.option_strings) or action.metavar or action.dest
            parser.error(f"{name}: an empty value is not allowed")
