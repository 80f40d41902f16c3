"""The one exception type users see.

Anything that is the user's to fix (a missing file, a wrong key, NaN in a dataset, a bad config value)
raises ``VgfError`` with a one-line message that names the file or key and the problem. The CLI prints
it to stderr as ``error: <message>`` and exits with code 2, never with a traceback.
"""

from __future__ import annotations


class VgfError(Exception):
    """A problem with the user's input or config; the message is shown as is, on one line."""

    exit_code = 2
    keep_run = False  # False: the stage run is discarded (nothing was computed that is worth keeping)

    def __init__(self, message: str):
        # Keep the message to a single line: users grep logs and CI shows the last line.
        super().__init__(" ".join(str(message).split()))


class TrainingDiverged(VgfError):
    """A computation that went wrong on valid input (a NaN or inf loss or weight): exit 1, and the
    run stays in the store as FAILED, with the metrics it logged, for the user to inspect."""

    exit_code = 1
    keep_run = True
