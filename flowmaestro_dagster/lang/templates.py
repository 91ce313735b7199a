"""`{{...}}` and `${...}` references in config values.

A string that is exactly one reference renders to the referenced value itself (a list stays a
list); references inside longer text render as text (objects as JSON). A reference nothing
provides stays verbatim, as in the upstream engine. Inside the braces: a path, or an expression
(`a || b`, `x > 3 ? 'hi' : 'lo'`), optionally followed by Liquid-style filters (`| truncate: 50`).

Rendering runs on a `Budget` (one for everything a call renders, shared by its references):
the text it produces is at most FLOWMAESTRO_EXPRESSION_MAX_SIZE, and going over a budget is an
`ExpressionBudgetError`, never a reference left verbatim (only references that do not parse or
resolve stay as written).

While `collect_misses()` is active (the runner opens one per node execution), every reference
a render leaves as written is recorded there, and may be refused on the spot (the
`unresolvedReferences: "error"` setting): the render's result is otherwise unchanged.
"""

import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from flowmaestro_dagster.errors import ExpressionBudgetError, ExpressionError
from flowmaestro_dagster.lang.expressions import (
    Budget,
    Evaluator,
    Scope,
    Unresolved,
    free_names,
    lookup_root,
    parse,
    path_of,
    reply_fields,
    to_number,
)

_REFERENCE = re.compile(r"\{\{(.*?)\}\}|\$\{([^{}]*)\}", re.DOTALL)
_DOLLAR = re.compile(r"\$\{([^{}]*)\}")
_MISSING: Any = object()


@dataclass(frozen=True)
class Reference:
    text: str  # the whole reference, braces included
    expression: str
    filters: tuple[tuple[str, str | None], ...]


@dataclass
class ReferenceMisses:
    """The references left as written while it is active, in order, each once.

    `on_miss` sees each one as it is found, before the render goes on: raising there stops the
    render, so nothing (a request, a message) is ever made from the verbatim text.
    """

    on_miss: Callable[[str], None] | None = None
    references: list[str] = field(default_factory=list)

    def add(self, reference: str) -> None:
        if reference in self.references:
            return
        self.references.append(reference)
        if self.on_miss is not None:
            self.on_miss(reference)


_MISSES: ContextVar[ReferenceMisses | None] = ContextVar("flowmaestro_misses", default=None)


@contextmanager
def collect_misses(on_miss: Callable[[str], None] | None = None) -> Iterator[ReferenceMisses]:
    """Record the references renders leave as written until the block ends (nested blocks
    record their own); a block without `on_miss` also keeps an outer one from seeing them."""
    misses = ReferenceMisses(on_miss)
    token = _MISSES.set(misses)
    try:
        yield misses
    finally:
        _MISSES.reset(token)


def _missed(ref: Reference) -> None:
    misses = _MISSES.get()
    if misses is not None:
        misses.add(ref.text)


def _reference_matches(text: str) -> Iterator[re.Match[str]]:
    """`{{...}}` and `${...}` in order. A `{{` after the last `}}` can never close, and letting
    the regex try each of them scans to the end of the text every time (`"{{" * n` took
    quadratic time): past the last `}}` only `${...}` is looked for."""
    close = text.rfind("}}")
    end = close + 2 if close >= 0 else 0
    yield from _REFERENCE.finditer(text, 0, end)
    yield from _DOLLAR.finditer(text, end)


def find_references(text: str) -> Iterator[tuple[re.Match[str], Reference]]:
    for match in _reference_matches(text):
        inner = next(group for group in match.groups() if group is not None)
        expression, filters = _split_filters(inner)
        yield match, Reference(match.group(0), expression.strip(), filters)


def _split_filters(inner: str) -> tuple[str, tuple[tuple[str, str | None], ...]]:
    parts: list[str] = []
    depth = 0
    quote = ""
    start = 0
    i = 0
    while i < len(inner):
        ch = inner[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "|" and depth == 0:
            if inner[i + 1 : i + 2] == "|":  # the `||` operator, not a filter
                i += 2
                continue
            parts.append(inner[start:i])
            start = i + 1
        i += 1
    parts.append(inner[start:])
    filters = []
    for part in parts[1:]:
        name, _, arg = part.partition(":")
        filters.append((name.strip(), arg.strip() or None))
    return parts[0], tuple(filters)


def render(value: Any, scope: Scope, *, budget: Budget | None = None) -> Any:
    """Render every reference in a config value (strings, lists and objects, recursively)."""
    budget = budget if budget is not None else Budget()
    if isinstance(value, str):
        return render_text(value, scope, budget=budget)
    if isinstance(value, list):
        return [render(item, scope, budget=budget) for item in value]
    if isinstance(value, dict):
        return {key: render(item, scope, budget=budget) for key, item in value.items()}
    return value


def render_text(text: str, scope: Scope, *, budget: Budget | None = None) -> Any:
    if "{{" not in text and "${" not in text:
        return text
    budget = budget if budget is not None else Budget()
    matches = list(find_references(text))
    if not matches:
        return text
    if len(matches) == 1:
        match, ref = matches[0]
        if match.start() == 0 and match.end() == len(text):
            value = resolve(ref, scope, budget=budget)
            if value is _MISSING:
                _missed(ref)
                return text
            return value
    pieces: list[str] = []
    size = 0
    last = 0
    for match, ref in matches:
        value = resolve(ref, scope, budget=budget)
        if value is _MISSING:
            _missed(ref)
        for piece in (
            text[last : match.start()],
            ref.text if value is _MISSING else budget.text_of(value),
        ):
            size += len(piece)
            budget.room(size)  # `{{big}}{{big}}...`: refused before the text exists
            pieces.append(piece)
        last = match.end()
    pieces.append(text[last:])
    return budget.text("".join(pieces))


def render_string(value: Any, scope: Scope, *, budget: Budget | None = None) -> str:
    """Render and always return text (for prompts, URLs, keys)."""
    budget = budget if budget is not None else Budget()
    rendered = render(value, scope, budget=budget)
    return "" if rendered is None else budget.text_of(rendered)


def resolve(ref: Reference, scope: Scope, *, budget: Budget | None = None) -> Any:
    """The referenced value, or `_MISSING` when it cannot be resolved; `ExpressionBudgetError`
    when resolving it goes over the budget."""
    budget = budget if budget is not None else Budget()
    budget.tick()  # a template of many cheap references is not free either
    try:
        node = parse(ref.expression)
    except ExpressionError:
        return _MISSING
    path = path_of(node)
    try:
        if path is not None:
            value = walk(lookup_root(scope, str(path[0])), path[1:])
        else:
            # `a || b`: names nothing provides are undefined, unless none resolves at all.
            evaluator = Evaluator(scope, lenient=True, budget=budget)
            value = evaluator.evaluate(node)
            names = set(free_names(node))
            if names and names <= set(evaluator.unresolved):
                return _MISSING
    except ExpressionBudgetError:
        raise
    except (Unresolved, ExpressionError):
        return _MISSING
    if value is _MISSING:
        return _MISSING
    for name, arg in ref.filters:
        value = apply_filter(name, arg, value, budget=budget)
        if value is _MISSING:
            return _MISSING
    return value


def lookup_path(scope: Scope, expression: str, *, budget: Budget | None = None) -> Any:
    """A bare path such as `fetch.body.items` (also `{{...}}` / `${...}`); `_MISSING` if absent.

    A `{{...}}` that resolves to nothing is a miss (`collect_misses`); a bare path is not: its
    callers take the text as it is."""
    text = expression.strip()
    matches = list(find_references(text))
    if len(matches) == 1 and matches[0][0].start() == 0 and matches[0][0].end() == len(text):
        value = resolve(matches[0][1], scope, budget=budget)
        if value is _MISSING:
            _missed(matches[0][1])
        return value
    return resolve(Reference(text, text, ()), scope, budget=budget)


def walk(value: Any, parts: Sequence[str | int]) -> Any:
    for part in parts:
        if isinstance(value, dict):
            key = part if isinstance(part, str) else str(part)
            if key not in value:
                fields = reply_fields(value)  # an LLM reply's JSON answer
                if fields is None or key not in fields:
                    return _MISSING
                value = fields[key]
                continue
            value = value[key]
        elif isinstance(value, list | str):
            if part == "length":
                value = len(value)
                continue
            try:
                index = int(part)
            except (TypeError, ValueError):
                return _MISSING
            if not 0 <= index < len(value):
                return _MISSING
            value = value[index]
        else:
            return _MISSING
    return value


def is_missing(value: Any) -> bool:
    return value is _MISSING


def apply_filter(name: str, arg: str | None, value: Any, *, budget: Budget | None = None) -> Any:
    budget = budget if budget is not None else Budget()
    argument = _filter_argument(arg)
    lowered = name.lower()
    if lowered == "truncate":
        size = int(to_number(argument)) if argument is not None else 50
        text = budget.text_of(value)
        return text if len(text) <= size else text[: max(size - 3, 0)] + "..."
    if lowered in ("upcase", "upper", "uppercase"):
        return budget.text(budget.text_of(value).upper())
    if lowered in ("downcase", "lower", "lowercase"):
        return budget.text(budget.text_of(value).lower())
    if lowered in ("strip", "trim"):
        return budget.text_of(value).strip()
    if lowered == "capitalize":
        return budget.text(budget.text_of(value).capitalize())
    if lowered == "default":
        return argument if value in (None, "", False) else value
    if lowered in ("json", "tojson"):
        if isinstance(value, list | dict):
            budget.measure(value)  # JSON repeats a shared part: measured before it is written
        return budget.text(json.dumps(value, ensure_ascii=False))
    if lowered in ("size", "length"):
        return len(value) if isinstance(value, list | dict | str) else 0
    if lowered == "join":
        sep = budget.text_of(argument) if argument is not None else " "
        if not isinstance(value, list):
            return budget.text_of(value)
        pieces = [budget.text_of(v) for v in value]
        budget.room(sum(len(piece) for piece in pieces) + len(sep) * max(len(pieces) - 1, 0))
        return budget.text(sep.join(pieces))
    if lowered == "first":
        return value[0] if isinstance(value, list | str) and value else None
    if lowered == "last":
        return value[-1] if isinstance(value, list | str) and value else None
    if lowered == "round":
        digits = int(to_number(argument)) if argument is not None else 0
        return round(to_number(value), digits) if digits else round(to_number(value))
    return _MISSING


def _filter_argument(arg: str | None) -> Any:
    if arg is None:
        return None
    if len(arg) >= 2 and arg[0] == arg[-1] and arg[0] in "'\"":
        return arg[1:-1]
    try:
        return json.loads(arg)
    except ValueError:
        return arg


def template_roots(text: str) -> Iterator[tuple[str, str | None]]:
    """(reference text, root name) per reference; root None when the reference cannot parse."""
    for _match, ref in find_references(text):
        try:
            node = parse(ref.expression)
        except ExpressionError:
            yield ref.text, None
            continue
        for name in dict.fromkeys(free_names(node)):
            yield ref.text, name
