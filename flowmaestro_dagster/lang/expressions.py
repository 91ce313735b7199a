"""A safe evaluator for the JavaScript-like expressions that definitions contain.

Conditions (`fitScore.score >= 60 && !review.text.includes('x')`), switch expressions and the
insides of `{{...}}` templates are parsed into a small AST and evaluated here: no `eval`, no
attribute access on Python objects, only whitelisted methods, and budgets on size, nesting and
work so that a hostile definition cannot hang or exhaust a worker.

Supported: literals (numbers, strings, true/false/null/undefined, arrays, objects), paths
(`a.b[0]['k']`, `a?.b`), `{{path}}` references, unary `! - + typeof`, `* / %`, `+ -`,
comparisons, `== != === !==`, `&& || ??`, the ternary `?:`, arrow functions as arguments of
array methods, and a few globals (`Object.keys`, `JSON.stringify`, `Math.max`, `$now`, ...).
Identifiers may contain `-` between word characters (node ids such as `llm-1`): write
subtraction with spaces (`a - 1`).
"""

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol

from flowmaestro_dagster.errors import ExpressionError

MAX_EXPRESSION_LENGTH = 20_000
MAX_NESTING = 64
MAX_STEPS = 200_000
MAX_STRING = 5_000_000


class Unresolved(Exception):
    """A name that no input, node, or variable provides."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class Scope(Protocol):
    def lookup(self, name: str) -> Any:
        """The value of a root name; raises `Unresolved` when nothing provides it."""
        ...


class Timestamp(str):
    """`$now`: an ISO-8601 string that also takes part in arithmetic as epoch milliseconds."""

    epoch_ms: int

    def __new__(cls, moment: datetime) -> "Timestamp":
        text = moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        obj = super().__new__(cls, text)
        obj.epoch_ms = round(moment.timestamp() * 1000)
        return obj


# -- tokens -------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<ref_open>\{\{)
  | (?P<ref_close>\}\})
  | (?P<number>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|`(?:[^`\\]|\\.)*`)
  | (?P<name>[A-Za-z_$][\w$]*(?:-[\w$]+)*)
  | (?P<op>===|!==|==|!=|<=|>=|&&|\|\||\?\?|\?\.|=>|\.\.\.|[-+*/%<>!?:.,()\[\]{}|])
    """,
    re.VERBOSE,
)

KEYWORDS = {"true": True, "false": False, "null": None, "undefined": None}


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    text: str
    pos: int


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            raise ExpressionError(f"unexpected character {text[pos]!r} at position {pos}")
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append(Token(kind, match.group(), pos))
        pos = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


def _unquote(literal: str) -> str:
    body = literal[1:-1]
    if "\\" not in body:
        return body
    escapes = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "0": "\0"}
    out = []
    chars = iter(body)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            out.append(escapes.get(nxt, nxt))
        else:
            out.append(ch)
    return "".join(out)


# -- AST ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Literal:
    value: Any


@dataclass(frozen=True, slots=True)
class Name:
    name: str


@dataclass(frozen=True, slots=True)
class Member:
    target: Any
    key: Any  # a node evaluating to the key
    optional: bool = False


@dataclass(frozen=True, slots=True)
class Call:
    target: Any  # Member or Name
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Unary:
    op: str
    operand: Any


@dataclass(frozen=True, slots=True)
class Binary:
    op: str
    left: Any
    right: Any


@dataclass(frozen=True, slots=True)
class Conditional:
    test: Any
    then: Any
    otherwise: Any


@dataclass(frozen=True, slots=True)
class ArrayLit:
    items: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class ObjectLit:
    entries: tuple[tuple[Any, Any], ...]  # (key node, value node); key None means spread


@dataclass(frozen=True, slots=True)
class Arrow:
    params: tuple[str, ...]
    body: Any


_BINARY_PRECEDENCE = {
    "??": 1,
    "||": 2,
    "&&": 3,
    "==": 4,
    "!=": 4,
    "===": 4,
    "!==": 4,
    "<": 5,
    ">": 5,
    "<=": 5,
    ">=": 5,
    "+": 6,
    "-": 6,
    "*": 7,
    "/": 7,
    "%": 7,
}


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.index = 0
        self.depth = 0

    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def peek(self, offset: int = 1) -> Token:
        return self.tokens[min(self.index + offset, len(self.tokens) - 1)]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def accept(self, text: str) -> bool:
        if text == "}" and self.current.kind == "ref_close":
            # `}}` closing two object literals, not a `{{ref}}`: split it.
            pos = self.current.pos
            self.tokens[self.index : self.index + 1] = [
                Token("op", "}", pos),
                Token("op", "}", pos + 1),
            ]
        if self.current.kind in ("op", "ref_open", "ref_close") and self.current.text == text:
            self.index += 1
            return True
        return False

    def expect(self, text: str) -> None:
        if not self.accept(text):
            got = self.current.text or "end of expression"
            raise ExpressionError(f"expected {text!r} at position {self.current.pos}, got {got!r}")

    def parse(self) -> Any:
        node = self.expression()
        if self.current.kind != "end":
            raise ExpressionError(
                f"unexpected {self.current.text!r} at position {self.current.pos}"
            )
        return node

    def expression(self) -> Any:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise ExpressionError("expression nested too deeply")
        try:
            arrow = self.try_arrow()
            if arrow is not None:
                return arrow
            test = self.binary(0)
            if self.accept("?"):
                then = self.expression()
                self.expect(":")
                otherwise = self.expression()
                return Conditional(test, then, otherwise)
            return test
        finally:
            self.depth -= 1

    def try_arrow(self) -> Arrow | None:
        token = self.current
        if token.kind == "name" and self.peek().text == "=>" and "-" not in token.text:
            self.index += 2
            return Arrow((token.text,), self.expression())
        if token.text != "(":
            return None
        # (a, b) => ... : look ahead for a parameter list followed by =>
        params: list[str] = []
        offset = 1
        while True:
            tok = self.peek(offset)
            if tok.text == ")" and not params and self.peek(offset + 1).text == "=>":
                break
            if tok.kind != "name" or "-" in tok.text:
                return None
            params.append(tok.text)
            sep = self.peek(offset + 1)
            if sep.text == ",":
                offset += 2
                continue
            if sep.text == ")" and self.peek(offset + 2).text == "=>":
                offset += 1
                break
            return None
        self.index += offset + 2
        return Arrow(tuple(params), self.expression())

    def binary(self, min_precedence: int) -> Any:
        left = self.unary()
        while True:
            token = self.current
            precedence = _BINARY_PRECEDENCE.get(token.text) if token.kind == "op" else None
            if precedence is None or precedence < min_precedence:
                return left
            self.advance()
            right = self.binary(precedence + 1)
            left = Binary(token.text, left, right)

    def unary(self) -> Any:
        token = self.current
        if token.kind == "op" and token.text in ("!", "-", "+"):
            self.advance()
            return Unary(token.text, self.unary())
        if token.kind == "name" and token.text == "typeof":
            self.advance()
            return Unary("typeof", self.unary())
        return self.postfix(self.primary())

    def postfix(self, node: Any) -> Any:
        while True:
            if self.accept("."):
                name = self.advance()
                if name.kind not in {"name", "number"}:
                    raise ExpressionError(f"expected a property name at position {name.pos}")
                node = Member(node, Literal(name.text))
            elif self.accept("?."):
                if self.accept("["):
                    key = self.expression()
                    self.expect("]")
                    node = Member(node, key, optional=True)
                else:
                    name = self.advance()
                    if name.kind != "name":
                        raise ExpressionError(f"expected a property name at position {name.pos}")
                    node = Member(node, Literal(name.text), optional=True)
            elif self.current.text == "[" and self.current.kind == "op":
                self.advance()
                key = self.expression()
                self.expect("]")
                node = Member(node, key)
            elif self.current.text == "(" and self.current.kind == "op":
                self.advance()
                args = []
                if not self.accept(")"):
                    while True:
                        args.append(self.expression())
                        if self.accept(")"):
                            break
                        self.expect(",")
                node = Call(node, tuple(args))
            else:
                return node

    def primary(self) -> Any:
        token = self.advance()
        if token.kind == "number":
            value = float(token.text)
            return Literal(int(value) if value.is_integer() and "." not in token.text else value)
        if token.kind == "string":
            return Literal(_unquote(token.text))
        if token.kind == "name":
            if token.text in KEYWORDS:
                return Literal(KEYWORDS[token.text])
            if token.text == "new":
                raise ExpressionError("'new' is not supported in expressions")
            return Name(token.text)
        if token.kind == "ref_open":
            inner = self.expression()
            self.expect("}}")
            return inner
        if token.text == "(":
            inner = self.expression()
            self.expect(")")
            return inner
        if token.text == "[":
            items = []
            if not self.accept("]"):
                while True:
                    items.append(self.expression())
                    if self.accept("]"):
                        break
                    self.expect(",")
            return ArrayLit(tuple(items))
        if token.text == "{":
            return self.object_literal()
        got = token.text or "end of expression"
        raise ExpressionError(f"unexpected {got!r} at position {token.pos}")

    def object_literal(self) -> ObjectLit:
        entries: list[tuple[Any, Any]] = []
        if self.accept("}"):
            return ObjectLit(())
        while True:
            if self.accept("..."):
                entries.append((None, self.expression()))
            else:
                key_token = self.advance()
                if key_token.kind == "string":
                    key: Any = Literal(_unquote(key_token.text))
                elif key_token.kind in ("name", "number"):
                    key = Literal(key_token.text)
                elif key_token.text == "[":
                    key = self.expression()
                    self.expect("]")
                else:
                    raise ExpressionError(f"bad object key at position {key_token.pos}")
                if self.accept(":"):
                    entries.append((key, self.expression()))
                else:
                    entries.append((key, Name(key_token.text)))
            if self.accept("}"):
                return ObjectLit(tuple(entries))
            self.expect(",")


@lru_cache(maxsize=4096)
def parse(text: str) -> Any:
    """Parse an expression (cached: the same text always gives the same tree)."""
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"expression longer than {MAX_EXPRESSION_LENGTH} characters")
    if not text.strip():
        raise ExpressionError("empty expression")
    return _Parser(text).parse()


# -- values with JavaScript semantics ------------------------------------------------------------


def truthy(value: Any) -> bool:
    """JavaScript truthiness: empty lists and objects are true, NaN is false."""
    if value is None or value is False:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0 and not (isinstance(value, float) and math.isnan(value))
    if isinstance(value, str):
        return value != ""
    return True


def to_number(value: Any) -> float:
    if isinstance(value, Timestamp):
        return value.epoch_ms
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if value is None:
        return 0.0
    if isinstance(value, str):
        stripped = value.strip()
        if stripped == "":
            return 0.0
        try:
            return float(stripped)
        except ValueError:
            return math.nan
    if isinstance(value, list) and len(value) <= 1:
        return to_number(value[0]) if value else 0.0
    return math.nan


def to_text(value: Any) -> str:
    """How a value is written into a string: JSON for objects, JS spelling for scalars."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def _number_result(value: float) -> int | float:
    if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def loose_equals(left: Any, right: Any) -> bool:
    """JavaScript `==`, on JSON values."""
    if left is None or right is None:
        return left is None and right is None
    if isinstance(left, bool) or isinstance(right, bool):
        if isinstance(left, bool) and isinstance(right, bool):
            return left == right
        return to_number(left) == to_number(right)
    if isinstance(left, int | float) and isinstance(right, int | float):
        return float(left) == float(right)
    if isinstance(left, str) and isinstance(right, str):
        return str.__eq__(left, right)
    if isinstance(left, int | float) or isinstance(right, int | float):
        if isinstance(left, list | dict) or isinstance(right, list | dict):
            return False
        return to_number(left) == to_number(right)
    return left is right or (
        isinstance(left, list | dict) and isinstance(right, list | dict) and left == right
    )


def strict_equals(left: Any, right: Any) -> bool:
    """JavaScript `===` (objects compare by value here: they come from JSON)."""
    if isinstance(left, bool) != isinstance(right, bool):
        return False
    if isinstance(left, int | float) and isinstance(right, int | float):
        return float(left) == float(right)
    if type(left) is not type(right) and not (isinstance(left, str) and isinstance(right, str)):
        return False
    return bool(left == right)


def _compare(op: str, left: Any, right: Any) -> bool:
    if (
        isinstance(left, str)
        and isinstance(right, str)
        and not (isinstance(left, Timestamp) or isinstance(right, Timestamp))
    ):
        a: Any = left
        b: Any = right
    else:
        a, b = to_number(left), to_number(right)
        if math.isnan(a) or math.isnan(b):
            return False
    if op == "<":
        return bool(a < b)
    if op == ">":
        return bool(a > b)
    if op == "<=":
        return bool(a <= b)
    return bool(a >= b)


def typeof(value: Any) -> str:
    if value is None:
        return "undefined"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, _Function):
        return "function"
    return "object"


# -- evaluation ----------------------------------------------------------------------------------


class _Function:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


class _Budget:
    __slots__ = ("steps",)

    def __init__(self) -> None:
        self.steps = 0

    def tick(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise ExpressionError(f"expression did more than {MAX_STEPS} steps")


class _Locals:
    """Arrow-function parameters layered over the outer scope."""

    def __init__(self, outer: Scope, values: Mapping[str, Any]) -> None:
        self.outer = outer
        self.values = values

    def lookup(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        return self.outer.lookup(name)


def _checked_text(text: str) -> str:
    if len(text) > MAX_STRING:
        raise ExpressionError(f"string result longer than {MAX_STRING} characters")
    return text


def _json_parse(text: Any) -> Any:
    try:
        return json.loads(to_text(text))
    except ValueError as exc:
        raise ExpressionError(f"JSON.parse: {exc}") from exc


def _parse_int(value: Any, base: Any = 10) -> Any:
    match = re.match(r"\s*([+-]?\d+)", to_text(value))
    if not match:
        return math.nan
    try:
        return int(match.group(1), int(to_number(base)) or 10)
    except ValueError:
        return math.nan


def _parse_float(value: Any) -> Any:
    match = re.match(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)", to_text(value))
    return _number_result(float(match.group(1))) if match else math.nan


def _math_fn(fn: Callable[..., float]) -> _Function:
    return _Function(lambda *args: _number_result(fn(*[to_number(a) for a in args])))


_GLOBALS: dict[str, Any] = {
    "Object": {
        "keys": _Function(lambda o: list(o.keys()) if isinstance(o, dict) else []),
        "values": _Function(lambda o: list(o.values()) if isinstance(o, dict) else []),
        "entries": _Function(
            lambda o: [[k, v] for k, v in o.items()] if isinstance(o, dict) else []
        ),
    },
    "JSON": {
        "stringify": _Function(lambda v, *_: to_text(json.dumps(v, ensure_ascii=False))),
        "parse": _Function(_json_parse),
    },
    "Math": {
        "max": _math_fn(lambda *a: max(a) if a else -math.inf),
        "min": _math_fn(lambda *a: min(a) if a else math.inf),
        "round": _math_fn(lambda a: math.floor(a + 0.5)),
        "floor": _math_fn(math.floor),
        "ceil": _math_fn(math.ceil),
        "abs": _math_fn(abs),
        "sqrt": _math_fn(lambda a: math.sqrt(a) if a >= 0 else math.nan),
        "pow": _math_fn(lambda a, b: a**b if abs(b) < 1024 else math.inf),
    },
    "Array": {"isArray": _Function(lambda v: isinstance(v, list))},
    "Number": _Function(lambda v=0: _number_result(to_number(v))),
    "String": _Function(lambda v="": to_text(v)),
    "Boolean": _Function(lambda v=None: truthy(v)),
    "parseInt": _Function(_parse_int),
    "parseFloat": _Function(_parse_float),
    "isNaN": _Function(lambda v: math.isnan(to_number(v))),
}


def _string_method(value: str, name: str, args: list[Any], budget: _Budget) -> Any:
    arg = [to_text(a) if not isinstance(a, int | float) else a for a in args]
    if name == "includes":
        return to_text(args[0]) in value if args else False
    if name == "startsWith":
        return value.startswith(to_text(args[0])) if args else False
    if name == "endsWith":
        return value.endswith(to_text(args[0])) if args else False
    if name in ("toLowerCase", "toLocaleLowerCase"):
        return value.lower()
    if name in ("toUpperCase", "toLocaleUpperCase"):
        return value.upper()
    if name == "trim":
        return value.strip()
    if name == "trimStart":
        return value.lstrip()
    if name == "trimEnd":
        return value.rstrip()
    if name == "indexOf":
        return value.find(to_text(args[0])) if args else -1
    if name in ("slice", "substring", "substr"):
        start = int(to_number(arg[0])) if args else 0
        end = int(to_number(arg[1])) if len(args) > 1 and args[1] is not None else None
        if name == "substr" and end is not None:
            end = start + end
        if name == "substring":
            start = max(start, 0)
            end = max(end, 0) if end is not None else None
        return value[start:end]
    if name == "split":
        sep = to_text(args[0]) if args and args[0] is not None else None
        if sep is None:
            return [value]
        return list(value) if sep == "" else value.split(sep)
    if name in ("replace", "replaceAll"):
        if len(args) < 2:
            return value
        old, new = to_text(args[0]), to_text(args[1])
        count = -1 if name == "replaceAll" else 1
        return _checked_text(value.replace(old, new, count))
    if name == "charAt":
        index = int(to_number(args[0])) if args else 0
        return value[index] if 0 <= index < len(value) else ""
    if name == "concat":
        return _checked_text(value + "".join(to_text(a) for a in args))
    if name == "toString":
        return value
    if name in ("padStart", "padEnd"):
        width = min(int(to_number(args[0])) if args else 0, MAX_STRING)
        fill = to_text(args[1]) if len(args) > 1 else " "
        return (
            value.rjust(width, fill[:1] or " ")
            if name == "padStart"
            else value.ljust(width, fill[:1] or " ")
        )
    raise ExpressionError(f"string method '{name}' is not supported")


def _call_fn(fn: Any, *args: Any) -> Any:
    if not isinstance(fn, _Function):
        raise ExpressionError("expected a function (for example item => item.score)")
    return fn(*args)


def _array_method(value: list[Any], name: str, args: list[Any], budget: _Budget) -> Any:
    fn = args[0] if args else None
    if name == "includes":
        return any(strict_equals(v, args[0]) for v in value) if args else False
    if name == "indexOf":
        return next((i for i, v in enumerate(value) if strict_equals(v, args[0])), -1)
    if name == "join":
        sep = to_text(args[0]) if args and args[0] is not None else ","
        return _checked_text(sep.join("" if v is None else to_text(v) for v in value))
    if name == "slice":
        start = int(to_number(args[0])) if args else 0
        end = int(to_number(args[1])) if len(args) > 1 and args[1] is not None else None
        return value[start:end]
    if name == "concat":
        out = list(value)
        for a in args:
            out.extend(a if isinstance(a, list) else [a])
        return out
    if name == "at":
        index = int(to_number(args[0])) if args else 0
        return value[index] if -len(value) <= index < len(value) else None
    if name == "flat":
        return [x for v in value for x in (v if isinstance(v, list) else [v])]
    if name == "reverse":
        return list(reversed(value))
    if name == "map":
        return [_tick(budget, _call_fn(fn, v, i)) for i, v in enumerate(value)]
    if name == "filter":
        return [v for i, v in enumerate(value) if truthy(_tick(budget, _call_fn(fn, v, i)))]
    if name == "find":
        return next((v for i, v in enumerate(value) if truthy(_call_fn(fn, v, i))), None)
    if name == "findIndex":
        return next((i for i, v in enumerate(value) if truthy(_call_fn(fn, v, i))), -1)
    if name == "some":
        return any(truthy(_tick(budget, _call_fn(fn, v, i))) for i, v in enumerate(value))
    if name == "every":
        return all(truthy(_tick(budget, _call_fn(fn, v, i))) for i, v in enumerate(value))
    if name == "reduce":
        items = list(value)
        if len(args) > 1:
            acc = args[1]
        elif items:
            acc = items.pop(0)
        else:
            raise ExpressionError("reduce of an empty array with no initial value")
        for i, v in enumerate(items):
            acc = _tick(budget, _call_fn(fn, acc, v, i))
        return acc
    if name == "toString":
        return ",".join(to_text(v) for v in value)
    raise ExpressionError(f"array method '{name}' is not supported")


def _tick(budget: _Budget, value: Any) -> Any:
    budget.tick()
    return value


def _get_member(target: Any, key: Any) -> Any:
    if isinstance(target, dict):
        return target.get(to_text(key) if not isinstance(key, str) else key)
    if isinstance(target, list):
        if key == "length":
            return len(target)
        if (isinstance(key, int | float) and not isinstance(key, bool)) or (
            isinstance(key, str) and key.isdigit()
        ):
            index = int(to_number(key))
            return target[index] if 0 <= index < len(target) else None
        return None
    if isinstance(target, str):
        if key == "length":
            return len(target)
        if (isinstance(key, int | float) and not isinstance(key, bool)) or (
            isinstance(key, str) and key.isdigit()
        ):
            index = int(to_number(key))
            return target[index] if 0 <= index < len(target) else None
        return None
    return None


def lookup_root(scope: Scope, name: str) -> Any:
    """A root name from the scope, else a built-in (`$now`, `Math`, ...); raises `Unresolved`."""
    try:
        return scope.lookup(name)
    except Unresolved:
        if name == "$now":
            return Timestamp(datetime.now(UTC))
        if name in _GLOBALS:
            return _GLOBALS[name]
        raise


class Evaluator:
    """Evaluates a parsed expression against a scope of names.

    With `lenient`, a name nothing provides is `undefined` (None) instead of an error: a
    condition may read the output of a branch that did not run.
    """

    def __init__(self, scope: Scope, *, lenient: bool = False) -> None:
        self.scope = scope
        self.lenient = lenient
        self.unresolved: list[str] = []
        self.budget = _Budget()

    def evaluate(self, node: Any, scope: Scope | None = None) -> Any:
        self.budget.tick()
        scope = scope or self.scope
        kind = type(node)
        if kind is Literal:
            return node.value
        if kind is Name:
            return self.lookup(node.name, scope)
        if kind is Member:
            target = self.evaluate(node.target, scope)
            if target is None:
                return None
            return _get_member(target, self.evaluate(node.key, scope))
        if kind is Binary:
            return self.binary(node, scope)
        if kind is Unary:
            try:
                value = self.evaluate(node.operand, scope)
            except Unresolved:
                if node.op != "typeof":
                    raise
                return "undefined"
            if node.op == "!":
                return not truthy(value)
            if node.op == "typeof":
                return typeof(value)
            number = to_number(value)
            return _number_result(-number if node.op == "-" else number)
        if kind is Conditional:
            branch = node.then if truthy(self.evaluate(node.test, scope)) else node.otherwise
            return self.evaluate(branch, scope)
        if kind is Call:
            return self.call(node, scope)
        if kind is ArrayLit:
            return [self.evaluate(item, scope) for item in node.items]
        if kind is ObjectLit:
            result: dict[str, Any] = {}
            for key, value in node.entries:
                if key is None:
                    spread = self.evaluate(value, scope)
                    if isinstance(spread, dict):
                        result.update(spread)
                else:
                    result[to_text(self.evaluate(key, scope))] = self.evaluate(value, scope)
            return result
        if kind is Arrow:
            return self.closure(node, scope)
        raise ExpressionError(f"cannot evaluate {kind.__name__}")

    def lookup(self, name: str, scope: Scope) -> Any:
        try:
            return lookup_root(scope, name)
        except Unresolved:
            if not self.lenient:
                raise
            self.unresolved.append(name)
            return None

    def closure(self, node: Arrow, scope: Scope) -> _Function:
        def run(*args: Any) -> Any:
            values = dict(zip(node.params, args, strict=False))
            return self.evaluate(node.body, _Locals(scope, values))

        return _Function(run)

    def binary(self, node: Binary, scope: Scope) -> Any:
        op = node.op
        left = self.evaluate(node.left, scope)
        if op == "&&":
            return self.evaluate(node.right, scope) if truthy(left) else left
        if op == "||":
            return left if truthy(left) else self.evaluate(node.right, scope)
        if op == "??":
            return left if left is not None else self.evaluate(node.right, scope)
        right = self.evaluate(node.right, scope)
        if op == "==":
            return loose_equals(left, right)
        if op == "!=":
            return not loose_equals(left, right)
        if op == "===":
            return strict_equals(left, right)
        if op == "!==":
            return not strict_equals(left, right)
        if op in ("<", ">", "<=", ">="):
            return _compare(op, left, right)
        if op == "+":
            timestamp = isinstance(left, Timestamp) or isinstance(right, Timestamp)
            if (isinstance(left, str) or isinstance(right, str)) and not timestamp:
                return _checked_text(to_text(left) + to_text(right))
            if isinstance(left, list | dict) or isinstance(right, list | dict):
                return _checked_text(to_text(left) + to_text(right))
            return _number_result(to_number(left) + to_number(right))
        a, b = to_number(left), to_number(right)
        if op == "-":
            return _number_result(a - b)
        if op == "*":
            return _number_result(a * b)
        if op == "/":
            if b == 0:
                return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)
            return _number_result(a / b)
        if op == "%":
            return _number_result(math.fmod(a, b)) if b != 0 else math.nan
        raise ExpressionError(f"unknown operator {op}")

    def call(self, node: Call, scope: Scope) -> Any:
        args = [self.evaluate(a, scope) for a in node.args]
        target = node.target
        if isinstance(target, Member):
            receiver = self.evaluate(target.target, scope)
            name = self.evaluate(target.key, scope)
            if receiver is None and target.optional:
                return None
            if isinstance(receiver, dict) and isinstance(receiver.get(name), _Function):
                return receiver[name](*args)
            if isinstance(receiver, str):
                return _string_method(receiver, to_text(name), args, self.budget)
            if isinstance(receiver, list):
                return _array_method(receiver, to_text(name), args, self.budget)
            if isinstance(receiver, dict) and name == "hasOwnProperty":
                return bool(args) and to_text(args[0]) in receiver
            if isinstance(receiver, int | float) and name in ("toFixed", "toString"):
                if name == "toFixed":
                    digits = int(to_number(args[0])) if args else 0
                    return f"{float(receiver):.{max(0, min(digits, 20))}f}"
                return to_text(receiver)
            raise ExpressionError(f"'{to_text(name)}' is not a supported method here")
        fn = self.evaluate(target, scope)
        if isinstance(fn, _Function):
            return fn(*args)
        raise ExpressionError("only built-in functions can be called")


def evaluate(text: str, scope: Scope, *, lenient: bool = False) -> Any:
    """Parse (cached) and evaluate an expression."""
    return Evaluator(scope, lenient=lenient).evaluate(parse(text))


def free_names(node: Any) -> Iterator[str]:
    """Root names an expression reads (not arrow parameters, globals or `$now`)."""
    yield from _free(node, frozenset())


def _free(node: Any, bound: frozenset[str]) -> Iterator[str]:
    kind = type(node)
    if kind is Name:
        if node.name not in bound and node.name not in _GLOBALS and node.name != "$now":
            yield node.name
    elif kind is Member:
        yield from _free(node.target, bound)
        if not isinstance(node.key, Literal):
            yield from _free(node.key, bound)
    elif kind is Call:
        yield from _free(node.target, bound)
        for arg in node.args:
            yield from _free(arg, bound)
    elif kind is Unary:
        yield from _free(node.operand, bound)
    elif kind is Binary:
        yield from _free(node.left, bound)
        yield from _free(node.right, bound)
    elif kind is Conditional:
        for part in (node.test, node.then, node.otherwise):
            yield from _free(part, bound)
    elif kind is ArrayLit:
        for item in node.items:
            yield from _free(item, bound)
    elif kind is ObjectLit:
        for key, value in node.entries:
            if key is not None and not isinstance(key, Literal):
                yield from _free(key, bound)
            yield from _free(value, bound)
    elif kind is Arrow:
        yield from _free(node.body, bound | set(node.params))


def path_of(node: Any) -> list[str | int] | None:
    """`a.b[0]` as ['a', 'b', 0] when the expression is a plain path, else None."""
    parts: list[str | int] = []
    while type(node) is Member:
        if not isinstance(node.key, Literal):
            return None
        key = node.key.value
        parts.append(key if isinstance(key, str | int) else to_text(key))
        node = node.target
    if type(node) is not Name:
        return None
    parts.append(node.name)
    return list(reversed(parts))
