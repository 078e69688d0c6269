"""User-facing errors.

Every mistake a user can make (a bad config key, a missing file, a non-SPD
matrix, a foreign checkpoint) raises :class:`UserInputError` with a one-line
message that names the culprit. The CLI turns it into exit status 2 without a
traceback; library callers can catch it like any ``ValueError``.
"""

from __future__ import annotations

__all__ = ["UserInputError"]


class UserInputError(ValueError):
    """Bad input from the user: the message is one line and names the culprit."""
