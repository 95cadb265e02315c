"""The one exception type for errors a user can cause (bad path, bad file, wrong basis, ...).

Command-line entry points catch it, print its one-line message and exit non-zero.
"""


class LoraXSError(Exception):
    """A user-caused error with a one-line, human-readable message."""
