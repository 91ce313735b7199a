"""`{{...}}` and `${...}` references in config values.

A string that is exactly one reference renders to the referenced value itself (a list stays a
list); references inside longer text render as text (objects as JSON). A reference nothing
provides stays verbatim, as in the upstream engine. Inside the braces: a path, or an expression
(`a || b`, `x > 3 ? 'hi' : 'lo'`), optionally followed by Liquid-style filters (`| truncate: 50`).
"""

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from flowmaestro_dagster.errors import ExpressionError
from flowmaestro_dagster.lang.expressions import (
    Evaluator,
    Scope,
    Unresolved,
    free_names,
    lookup_root,
    parse,
    path_of,
    to_number,
    to_text,
)

_REFERENCE = re.compile(r"\{\{(.*?)\}\}|\$\{([^{}]*)\}", re.DOTALL)
_MISSING: Any = object()


@dataclass(frozen=True)
class Reference:
    text: str  # the whole reference, braces included
    expression: str
    filters: tuple[tuple[str, str | None], ...]


def find_references(text: str) -> Iterator[tuple[re.Match[str], Reference]]:
    for match in _REFERENCE.finditer(text):
        inner = match.group(1) if match.group(1) is not None else match.group(2)
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


def render(value: Any, scope: Scope) -> Any:
    """Render every reference in a config value (strings, lists and objects, recursively)."""
    if isinstance(value, str):
        return render_text(value, scope)
    if isinstance(value, list):
        return [render(item, scope) for item in value]
    if isinstance(value, dict):
        return {key: render(item, scope) for key, item in value.items()}
    return value


def render_text(text: str, scope: Scope) -> Any:
    if "{{" not in text and "${" not in text:
        return text
    matches = list(find_references(text))
    if not matches:
        return text
    if len(matches) == 1:
        match, ref = matches[0]
        if match.start() == 0 and match.end() == len(text):
            value = resolve(ref, scope)
            return text if value is _MISSING else value
    pieces: list[str] = []
    last = 0
    for match, ref in matches:
        pieces.append(text[last : match.start()])
        value = resolve(ref, scope)
        pieces.append(ref.text if value is _MISSING else to_text(value))
        last = match.end()
    pieces.append(text[last:])
    return "".join(pieces)


def render_string(value: Any, scope: Scope) -> str:
    """Render and always return text (for prompts, URLs, keys)."""
    rendered = render(value, scope)
    return "" if rendered is None else to_text(rendered)


def resolve(ref: Reference, scope: Scope) -> Any:
    """The referenced value, or `_MISSING` when it cannot be resolved."""
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
            evaluator = Evaluator(scope, lenient=True)
            value = evaluator.evaluate(node)
            names = set(free_names(node))
            if names and names <= set(evaluator.unresolved):
                return _MISSING
    except (Unresolved, ExpressionError):
        return _MISSING
    if value is _MISSING:
        return _MISSING
    for name, arg in ref.filters:
        value = apply_filter(name, arg, value)
        if value is _MISSING:
            return _MISSING
    return value


def lookup_path(scope: Scope, expression: str) -> Any:
    """A bare path such as `fetch.body.items` (also `{{...}}` / `${...}`); `_MISSING` if absent."""
    text = expression.strip()
    matches = list(find_references(text))
    if len(matches) == 1 and matches[0][0].start() == 0 and matches[0][0].end() == len(text):
        return resolve(matches[0][1], scope)
    return resolve(Reference(text, text, ()), scope)


def walk(value: Any, parts: Sequence[str | int]) -> Any:
    for part in parts:
        if isinstance(value, dict):
            key = part if isinstance(part, str) else str(part)
            if key not in value:
                return _MISSING
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


def apply_filter(name: str, arg: str | None, value: Any) -> Any:
    argument = _filter_argument(arg)
    lowered = name.lower()
    if lowered == "truncate":
        size = int(to_number(argument)) if argument is not None else 50
        text = to_text(value)
        return text if len(text) <= size else text[: max(size - 3, 0)] + "..."
    if lowered in ("upcase", "upper", "uppercase"):
        return to_text(value).upper()
    if lowered in ("downcase", "lower", "lowercase"):
        return to_text(value).lower()
    if lowered in ("strip", "trim"):
        return to_text(value).strip()
    if lowered == "capitalize":
        return to_text(value).capitalize()
    if lowered == "default":
        return argument if value in (None, "", False) else value
    if lowered in ("json", "tojson"):
        return json.dumps(value, ensure_ascii=False)
    if lowered in ("size", "length"):
        return len(value) if isinstance(value, list | dict | str) else 0
    if lowered == "join":
        sep = to_text(argument) if argument is not None else " "
        return sep.join(to_text(v) for v in value) if isinstance(value, list) else to_text(value)
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
