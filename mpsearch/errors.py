"""The project's single error type.

Every failure a user can cause (bad input, infeasible budget, corrupt file) is raised as
``MpsearchError`` with a one-line message naming the problem and the fix; the CLI prints that line
and exits non-zero. Anything else escaping is a bug in mpsearch.
"""

from __future__ import annotations


class MpsearchError(Exception):
    """A user-facing error: the message is one line and says what to do about it."""

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        text = message if hint is None else f"{message} ({hint})"
        super().__init__(" ".join(text.split()))
