"""Loading of edgecloud's YAML files into pydantic models with user-grade errors.

Every file format (infrastructure, application topology) goes through `load_model`, so
every validation error names the file, the path inside it (`spec.sites[1].wan.delay`)
and what was expected, and several errors are reported together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from edgecloud.errors import FileValidationError, UserError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every file and wire model: unknown keys are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def format_loc(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic location as a path: ('spec', 'sites', 1, 'wan') -> spec.sites[1].wan."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-") or part in ("str", "int", "float"):
            continue  # pydantic's internal validator names carry no meaning for the user
        else:
            out += f".{part}" if out else part
    return out


def _describe(err: ErrorDetails) -> str:
    msg = str(err["msg"])
    msg = msg.removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return "unknown field (check its spelling and indentation)"
    if err["type"] == "missing":
        return "required field is missing"
    if "input" in err and "got " not in msg and err["type"] not in ("model_type", "dict_type"):
        return f"{msg} (got {err['input']!r})"
    return msg


def validation_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """Turn a pydantic ValidationError into (path, message) pairs."""
    return [(format_loc(e["loc"]), _describe(e)) for e in exc.errors()]


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file, turning I/O and syntax errors into a UserError naming the file."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise UserError(f"{p}: file not found") from None
    except OSError as exc:
        raise UserError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{p}: not valid YAML{where}: {problem}") from None


def load_model(path: str | Path, model: type[M], data: Any = None) -> M:
    """Validate a YAML file (or already-read `data`) against `model`."""
    if data is None:
        data = read_yaml(path)
    if not isinstance(data, dict):
        raise FileValidationError(str(path), [("", "expected a mapping with apiVersion, kind, "
                                                    "metadata and spec")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise FileValidationError(str(path), validation_problems(exc)) from None
