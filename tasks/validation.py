"""The one way a validation error becomes a line a person can act on, for every part: each
problem as `where: what`, joined by `; `, `where` named as the person knows the field (a
dotted path, an environment variable, a command-line option)."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ValidationError
from pydantic_core import ErrorDetails

Location = tuple[int | str, ...]


def dotted(loc: Location) -> str:
    return ".".join(str(part) for part in loc)


def problems(
    exc: ValidationError,
    *,
    where: Callable[[Location], str] = dotted,
    whole: str = "(root)",
    instead: Callable[[ErrorDetails], str | None] | None = None,
) -> str:
    """Every problem of `exc` on one line. `whole` names an error about the value as a whole;
    `instead` may give a problem's whole line (a hint saying what to put there)."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        line = instead(error) if instead else None
        if line is None:
            loc = tuple(error["loc"])
            line = f"{where(loc) if loc else whole}: {error['msg']}"
        lines.append(line)
    return "; ".join(lines)
