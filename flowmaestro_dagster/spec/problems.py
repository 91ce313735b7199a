"""Validation problems: what a builder shows next to a node or a field."""

from typing import Literal

from pydantic import BaseModel, ConfigDict

Severity = Literal["error", "warning"]


class Problem(BaseModel):
    """One finding about a workflow definition."""

    model_config = ConfigDict(frozen=True)

    severity: Severity
    code: str
    message: str
    node_id: str | None = None
    field: str | None = None
    path: str | None = None

    def describe(self) -> str:
        where = []
        if self.node_id is not None:
            where.append(f"node '{self.node_id}'")
        if self.field:
            where.append(f"field '{self.field}'")
        if self.path and not where:
            where.append(self.path)
        prefix = " ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


def error(code: str, message: str, **where: str | None) -> Problem:
    return Problem(severity="error", code=code, message=message, **where)


def warning(code: str, message: str, **where: str | None) -> Problem:
    return Problem(severity="warning", code=code, message=message, **where)


def has_errors(problems: list[Problem]) -> bool:
    return any(p.severity == "error" for p in problems)
