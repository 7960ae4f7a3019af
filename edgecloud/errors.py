"""Error classes shared by every layer.

`UserError` is for bad input a user can fix (a wrong file, a busy port, an unknown site):
the CLI prints its message and exits with `exit_code`, never a traceback. Anything else
that escapes is a bug in edgecloud.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or environment the user can fix; printed without a traceback."""

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class FileValidationError(UserError):
    """A YAML/JSON file failed validation; lists every problem with its path in the file."""

    def __init__(self, file: str, problems: list[tuple[str, str]]) -> None:
        self.file = file
        self.problems = problems
        lines = [f"{file}: {len(problems)} problem(s)"]
        lines += [f"  {path or '<top>'}: {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


class NotRunningError(UserError):
    """No edgecloud infrastructure is running under the given home directory."""
