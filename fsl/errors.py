"""Errors that the CLI reports as one line, without a traceback."""


class FslError(Exception):
    """Base: a problem with what the user asked for, not a bug. `exit_code` is the CLI's."""

    exit_code = 1


class UsageError(FslError, ValueError):
    """A parameter outside its allowed range; the message names the parameter (exit code 2)."""

    exit_code = 2


class DataError(FslError, ValueError):
    """Input data that cannot be read; the message names the file or value (exit code 1)."""


class RunStopped(Exception):
    """Raised inside a run to stop it on purpose (a search pruning a poor trial): the run ends
    with `status` (KILLED) and `tags`, not FAILED, and the exception propagates."""

    def __init__(self, why: str, status: str = "KILLED", tags: dict[str, str] | None = None) -> None:
        super().__init__(why)
        self.status, self.tags = status, tags or {}
