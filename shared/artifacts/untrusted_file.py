"""The one way to read a file a user, a device or another process may have put anywhere: keys,
adapters, export descriptions, text inputs.

Opened with O_NONBLOCK, then fstat'ed: anything but a regular file (a named pipe, a device such
as /dev/zero, a folder) is refused before a byte is read, so nothing blocks on a pipe without a
writer or reads an endless device. The size is checked against a cap before reading, and the
read itself stops one byte past the cap (a file that grows meanwhile is refused too). No
torch / numpy here: `client.predict` uses it on a device.
"""

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from shared.errors import LoraXSError

MiB = 2**20


def _describe(mode: int) -> str:
    for test, what in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return what
    return "not a regular file"


def _limit_text(max_bytes: int) -> str:
    return f"{max_bytes / MiB:g} MiB" if max_bytes >= MiB else f"{max_bytes:,} bytes"


def open_regular(path: str | Path, kind: str, max_bytes: int):
    """A binary file object of the regular file `path` (following symlinks), at most `max_bytes`
    long; LoraXSError (one line) for anything else. The caller closes it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise LoraXSError(f"{kind} {path} does not exist") from None
    except (OSError, ValueError, TypeError) as err:  # ValueError: a NUL in the name
        raise LoraXSError(f"cannot read {kind} {path}: {getattr(err, 'strerror', None) or err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LoraXSError(f"{kind} {path} is {_describe(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes:
            raise LoraXSError(
                f"{kind} {path} is {_limit_text(info.st_size)}, more than the {_limit_text(max_bytes)} allowed"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_untrusted(path: str | Path, kind: str, max_bytes: int) -> bytes:
    """All bytes of the regular file `path`, refused with one line when it is not one or holds
    more than `max_bytes`."""
    with open_regular(path, kind, max_bytes) as handle:
        try:
            data = handle.read(max_bytes + 1)
        except OSError as err:
            raise LoraXSError(f"cannot read {kind} {path}: {err.strerror or err}") from None
    if len(data) > max_bytes:  # it grew while being read
        raise LoraXSError(f"{kind} {path} is more than the {_limit_text(max_bytes)} allowed")
    return data


def read_untrusted_text(path: str | Path, kind: str, max_bytes: int, encoding: str = "utf-8") -> str:
    data = read_untrusted(path, kind, max_bytes)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        raise LoraXSError(f"{kind} {path} is not {encoding.upper()} text") from None


def bounded_lines(handle, source: str, max_bytes: int, max_line_bytes: int) -> Iterator[str]:
    """The lines of a binary stream (a file from `open_regular`, or stdin's buffer), decoded as
    UTF-8 one at a time, without their line ends: never more than `max_bytes` in all or
    `max_line_bytes` a line (either is one LoraXSError, raised when it is reached)."""
    total = 0
    for number, raw in enumerate(iter(lambda: handle.readline(max_line_bytes + 1), b""), start=1):
        total += len(raw)
        if len(raw.rstrip(b"\r\n")) > max_line_bytes:
            raise LoraXSError(f"{source}:{number}: a line longer than {_limit_text(max_line_bytes)}")
        if total > max_bytes:
            raise LoraXSError(f"{source} holds more than the {_limit_text(max_bytes)} allowed")
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise LoraXSError(f"{source}:{number}: not UTF-8 text") from None
