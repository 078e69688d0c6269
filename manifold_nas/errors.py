"""User-facing errors.

Every mistake a user can make (a bad config key, a missing file, a non-SPD
matrix, a foreign checkpoint) raises :class:`UserInputError` with a one-line
message that names the culprit. The CLI turns it into exit status 2 without a
traceback; library callers can catch it like any ``ValueError``.
"""

from __future__ import annotations

__all__ = ["DiskFullError", "UserInputError"]


class UserInputError(ValueError):
    """Bad input from the user: the message is one line and names the culprit."""


class DiskFullError(UserInputError):
    """A write found no space left: names the directory and its free space.

    Nothing is lost: the atomic writer removed its temporary file and the
    previous checkpoint still loads, so the command line adds the resume
    command to the message.
    """
