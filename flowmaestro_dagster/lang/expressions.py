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
from decimal import ROUND_HALF_UP, Context, Decimal
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


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}
_HEX_ESCAPE = re.compile(r"x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|u\{([0-9a-fA-F]{1,6})\}")


def _unquote(literal: str) -> str:
    body = literal[1:-1]
    if "\\" not in body:
        return body
    out = []
    pos = 0
    while pos < len(body):
        ch = body[pos]
        if ch != "\\":
            out.append(ch)
            pos += 1
            continue
        code = _HEX_ESCAPE.match(body, pos + 1)  # \xHH, \uHHHH, \u{H...}
        point = int(next(g for g in code.groups() if g), 16) if code else -1
        if code and point <= 0x10FFFF:
            out.append(chr(point))
            pos = code.end()
            continue
        nxt = body[pos + 1 : pos + 2]
        out.append(_ESCAPES.get(nxt, nxt))
        pos += 2
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
                node = Call(node, self.items_until(")"))
            else:
                return node

    def items_until(self, close: str) -> tuple[Any, ...]:
        """Comma-separated expressions up to and including `close` (call arguments, array items)."""
        items: list[Any] = []
        if not self.accept(close):
            while True:
                items.append(self.expression())
                if self.accept(close):
                    break
                self.expect(",")
        return tuple(items)

    def primary(self) -> Any:
        token = self.advance()
        if token.kind == "number":
            value = float(token.text)
            integral = value.is_integer() and abs(value) < 2**53 and "." not in token.text
            return Literal(int(value) if integral else value)
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
            return ArrayLit(self.items_until("]"))
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
                elif key_token.kind == "name":
                    key = Literal(key_token.text)
                elif key_token.kind == "number":  # `{1.50: x}` has the key "1.5", as in JS
                    key = Literal(to_text(float(key_token.text)))
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
        return _string_to_number(value)
    if isinstance(value, list) and len(value) <= 1:
        if value and isinstance(value[0], bool):
            return math.nan  # Number([true]) is Number("true")
        return to_number(value[0]) if value else 0.0
    return math.nan


# What JS `trim` and `Number(text)` strip (Python's `str.strip` strips a different set).
_JS_SPACE = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_DECIMAL = re.compile(r"[+-]?(?:Infinity|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)")
_RADIX_LITERAL = re.compile(r"0(?:([xX][0-9a-fA-F]+)|([oO][0-7]+)|([bB][01]+))")


def _string_to_number(text: str) -> float:
    """JS `Number(text)`: no `inf`, `nan` or `1_000` (which Python's `float` accepts), but hex."""
    stripped = text.strip(_JS_SPACE)
    if stripped == "":
        return 0.0
    if _DECIMAL.fullmatch(stripped):
        return float(stripped)
    literal = _RADIX_LITERAL.fullmatch(stripped)
    if literal is None:
        return math.nan
    return _int_to_float(int(stripped[2:], {"x": 16, "o": 8, "b": 2}[stripped[1].lower()]))


def _int_to_float(value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.copysign(math.inf, value)


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
        return _number_text(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def _number_text(value: float) -> str:
    """JS `Number.prototype.toString` of a finite number: `1e-7`, `0.00001`, `1e+21`."""
    if value == 0:
        return "0"
    shortest = Decimal(repr(abs(value))).normalize().as_tuple()  # repr: the shortest round trip
    digits = "".join(map(str, shortest.digits))
    size = len(digits)
    point = int(shortest.exponent) + size  # the decimal point sits after `point` digits
    if size <= point <= 21:
        text = digits + "0" * (point - size)
    elif 0 < point <= 21:
        text = f"{digits[:point]}.{digits[point:]}"
    elif -6 < point <= 0:
        text = "0." + "0" * -point + digits
    else:
        mantissa = f"{digits[0]}.{digits[1:]}" if size > 1 else digits
        text = f"{mantissa}e{point - 1:+d}"
    return "-" + text if value < 0 else text


def _number_result(value: float) -> int | float:
    """Whole numbers as `int` (so they print as `3`), except -0, which JS keeps (`1 / -0`)."""
    value = float(value)
    if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
        return int(value) if value or math.copysign(1.0, value) > 0 else value
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
        return to_number(left) == to_number(right)  # `[5] == 5`, `[] == 0` as in JS
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


class Layered:
    """`values` layered over the outer scope (arrow-function parameters, a node's variables)."""

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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_parse(text: Any) -> Any:
    try:
        return json.loads(to_text(text), parse_constant=_reject_constant)
    except ValueError as exc:
        raise ExpressionError(f"JSON.parse: {exc}") from exc


def _json_stringify(value: Any, _replacer: Any = None, space: Any = None) -> str | None:
    """JS `JSON.stringify`: compact (`{"a":1}`) unless `space` is given, JS number spelling."""
    if isinstance(space, int | float) and not isinstance(space, bool):
        indent = " " * max(0, min(10, int(space))) if math.isfinite(space) else ""
    else:
        indent = space[:10] if isinstance(space, str) else ""
    return _json_text(value, indent, "\n")


def _json_text(value: Any, indent: str, newline: str) -> str | None:
    if isinstance(value, _Function):
        return None
    if value is None or isinstance(value, bool | str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return _number_text(value) if math.isfinite(value) else "null"
    if isinstance(value, int):
        return str(value)
    inner = newline + indent
    if isinstance(value, list):
        items = [_json_text(v, indent, inner) or "null" for v in value]
        return _json_join("[", items, "]", indent, newline)
    if isinstance(value, dict):
        colon = ": " if indent else ":"
        entries = [
            (json.dumps(str(k), ensure_ascii=False), _json_text(v, indent, inner))
            for k, v in value.items()
        ]
        fields = [f"{k}{colon}{v}" for k, v in entries if v is not None]
        return _json_join("{", fields, "}", indent, newline)
    return json.dumps(str(value), ensure_ascii=False)


def _json_join(start: str, parts: list[str], end: str, indent: str, newline: str) -> str:
    if not parts:
        return start + end
    if not indent:
        return start + ",".join(parts) + end
    inner = newline + indent
    return start + inner + ("," + inner).join(parts) + newline + end


def _parse_int(value: Any, base: Any = None) -> Any:
    """JS `parseInt`: the longest prefix of digits valid in the radix (`0x` means 16)."""
    text = to_text(value).lstrip(_JS_SPACE)
    sign = -1.0 if text.startswith("-") else 1.0
    if text[:1] in ("-", "+"):
        text = text[1:]
    radix_number = to_number(base)
    radix = int(radix_number) if math.isfinite(radix_number) else 0
    if radix in (0, 16) and text[:2] in ("0x", "0X"):
        text, radix = text[2:], 16
    radix = radix or 10
    if not 2 <= radix <= 36:
        return math.nan
    size = 0
    while size < len(text) and text[size].isascii() and text[size].isalnum():
        if int(text[size], 36) >= radix:
            break
        size += 1
    if size == 0:
        return math.nan
    return _number_result(sign * _int_to_float(int(text[:size], radix)))


_FLOAT_PREFIX = re.compile(r"[+-]?(?:Infinity|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)")


def _parse_float(value: Any) -> Any:
    match = _FLOAT_PREFIX.match(to_text(value).lstrip(_JS_SPACE))
    return _number_result(float(match.group())) if match else math.nan


def _math_fn(fn: Callable[..., float]) -> _Function:
    return _Function(lambda *args: _number_result(fn(*[to_number(a) for a in args])))


def _rounding(fn: Callable[[float], int]) -> Callable[..., float]:
    """`Math.floor`/`ceil`/`round`: NaN and Infinity pass through, and -0.4 rounds to -0."""

    def run(value: float = math.nan, *_: float) -> float:
        if not math.isfinite(value):
            return value
        result = float(fn(value))
        return -0.0 if result == 0 and math.copysign(1.0, value) < 0 else result

    return run


def _round(value: float) -> int:
    """Half up, exactly: `floor(x + 0.5)` would round 0.49999999999999994 up."""
    floor = math.floor(value)
    return floor + 1 if value - floor >= 0.5 else floor


def _extreme(bigger: bool) -> Callable[..., float]:
    """`Math.max`/`min`: NaN wins, and +0 is bigger than -0."""

    def run(*values: float) -> float:
        best = -math.inf if bigger else math.inf
        for value in values:
            if math.isnan(value):
                return math.nan
            if value == best == 0:
                better = (math.copysign(1.0, value) > 0) == bigger
            else:
                better = value > best if bigger else value < best
            if better:
                best = value
        return best

    return run


def _pow(base: float = math.nan, exponent: float = math.nan, *_: float) -> float:
    """JS `Math.pow`: NaN, Infinity and 0 where Python raises or returns a complex number."""
    if math.isnan(exponent):
        return math.nan
    if exponent == 0:
        return 1.0
    if math.isnan(base) or (abs(base) == 1 and math.isinf(exponent)):
        return math.nan
    odd = exponent.is_integer() and math.fmod(exponent, 2) != 0
    try:
        return math.pow(base, exponent)
    except OverflowError:
        return -math.inf if base < 0 and odd else math.inf
    except ValueError:  # 0 to a negative power, or a negative base to a fraction
        if base != 0:
            return math.nan
        return -math.inf if odd and math.copysign(1.0, base) < 0 else math.inf


_GLOBALS: dict[str, Any] = {
    "Object": {
        "keys": _Function(lambda o=None: [k for k, _ in _own_entries(o)]),
        "values": _Function(lambda o=None: [v for _, v in _own_entries(o)]),
        "entries": _Function(lambda o=None: [[k, v] for k, v in _own_entries(o)]),
    },
    "JSON": {
        "stringify": _Function(_json_stringify),
        "parse": _Function(_json_parse),
    },
    "Math": {
        "max": _math_fn(_extreme(bigger=True)),
        "min": _math_fn(_extreme(bigger=False)),
        "round": _math_fn(_rounding(_round)),
        "floor": _math_fn(_rounding(math.floor)),
        "ceil": _math_fn(_rounding(math.ceil)),
        "abs": _math_fn(lambda a=math.nan, *_: abs(a)),
        "sqrt": _math_fn(lambda a=math.nan, *_: math.sqrt(a) if a >= 0 else math.nan),
        "pow": _math_fn(_pow),
    },
    "Array": {"isArray": _Function(lambda v: isinstance(v, list))},
    "Number": _Function(lambda v=0: _number_result(to_number(v))),
    "String": _Function(lambda v="": to_text(v)),
    "Boolean": _Function(lambda v=None: truthy(v)),
    "parseInt": _Function(_parse_int),
    "parseFloat": _Function(_parse_float),
    "isNaN": _Function(lambda v: math.isnan(to_number(v))),
}


def _own_entries(value: Any) -> list[tuple[str, Any]]:
    """Own enumerable properties, as `Object.entries` and `{...x}` see them (lists by index)."""
    if isinstance(value, dict):
        return [(str(k), v) for k, v in value.items()]
    if isinstance(value, list | str):
        return [(str(i), v) for i, v in enumerate(value)]
    return []


def _integer(value: Any) -> int:
    """JS ToIntegerOrInfinity, for indexes: NaN is 0, fractions truncate, infinities saturate."""
    number = to_number(value)
    if math.isnan(number):
        return 0
    if math.isinf(number):
        return 2**53 if number > 0 else -(2**53)
    return int(number)


def _position(args: list[Any], index: int, size: int, default: int) -> int:
    """An optional position argument (`includes(x, from)`), clamped to `[0, size]`."""
    if len(args) <= index or args[index] is None:
        return default
    return min(max(_integer(args[index]), 0), size)


def _substitute(replacement: str, matched: str, position: int, text: str) -> str:
    """The `$$ $& $` $'` patterns of a `replace` replacement string."""
    if "$" not in replacement:
        return replacement
    patterns = {
        "$": "$",
        "&": matched,
        "`": text[:position],
        "'": text[position + len(matched) :],
    }
    out = []
    pos = 0
    while pos < len(replacement):
        nxt = replacement[pos + 1 : pos + 2]
        if replacement[pos] == "$" and nxt in patterns:
            out.append(patterns[nxt])
            pos += 2
        else:
            out.append(replacement[pos])
            pos += 1
    return "".join(out)


def _string_method(value: str, name: str, args: list[Any], budget: _Budget) -> Any:
    size = len(value)
    search = to_text(args[0]) if args else "undefined"
    if name == "includes":
        return value.find(search, _position(args, 1, size, 0)) != -1
    if name == "startsWith":
        return value.startswith(search, _position(args, 1, size, 0))
    if name == "endsWith":
        return value.endswith(search, 0, _position(args, 1, size, size))
    if name in ("toLowerCase", "toLocaleLowerCase"):
        return value.lower()
    if name in ("toUpperCase", "toLocaleUpperCase"):
        return value.upper()
    if name == "trim":
        return value.strip(_JS_SPACE)
    if name == "trimStart":
        return value.lstrip(_JS_SPACE)
    if name == "trimEnd":
        return value.rstrip(_JS_SPACE)
    if name == "indexOf":
        return value.find(search, _position(args, 1, size, 0))
    if name == "slice":
        start = _integer(args[0]) if args else 0
        end = _integer(args[1]) if len(args) > 1 and args[1] is not None else None
        return value[start:end]
    if name == "substring":  # clamps to [0, length] and swaps reversed bounds
        start = _position(args, 0, size, 0)
        end = _position(args, 1, size, size)
        return value[min(start, end) : max(start, end)]
    if name == "substr":  # (start, length); a negative start counts from the end
        start = _integer(args[0]) if args else 0
        start = min(max(size + start, 0) if start < 0 else start, size)
        return value[start : start + _position(args, 1, size - start, size - start)]
    if name == "split":
        if not args or args[0] is None:
            return [value]
        parts = list(value) if search == "" else value.split(search)
        if len(args) > 1 and args[1] is not None:
            limit = to_number(args[1])
            parts = parts[: int(limit) % 2**32 if math.isfinite(limit) else 0]
        return parts
    if name in ("replace", "replaceAll"):
        if len(args) < 2:
            return value
        new = to_text(args[1])
        positions = []
        pos = value.find(search)
        while pos != -1:
            positions.append(pos)
            if name == "replace":
                break
            pos = value.find(search, pos + max(len(search), 1))
        out = []
        end = 0
        for pos in positions:
            out.append(value[end:pos])
            out.append(_substitute(new, search, pos, value))
            end = pos + len(search)
        out.append(value[end:])
        return _checked_text("".join(out))
    if name == "charAt":
        index = _integer(args[0]) if args else 0
        return value[index] if 0 <= index < size else ""
    if name == "concat":
        return _checked_text(value + "".join(to_text(a) for a in args))
    if name == "toString":
        return value
    if name in ("padStart", "padEnd"):
        width = min(_integer(args[0]) if args else 0, MAX_STRING)
        fill = to_text(args[1]) if len(args) > 1 else " "
        if width <= size or not fill:
            return value
        pad = (fill * ((width - size) // len(fill) + 1))[: width - size]
        return pad + value if name == "padStart" else value + pad
    raise ExpressionError(f"string method '{name}' is not supported")


def _call_fn(fn: Any, *args: Any) -> Any:
    if not isinstance(fn, _Function):
        raise ExpressionError("expected a function (for example item => item.score)")
    return fn(*args)


def _array_method(value: list[Any], name: str, args: list[Any], budget: _Budget) -> Any:
    fn = args[0] if args else None
    if name in ("includes", "indexOf"):
        start = _integer(args[1]) if len(args) > 1 else 0
        start = max(len(value) + start, 0) if start < 0 else start
        search = args[0] if args else None
        # includes is SameValueZero ([NaN].includes(NaN)); indexOf is ===
        same = _same_value_zero if name == "includes" else strict_equals
        found = next((i for i in range(start, len(value)) if same(value[i], search)), -1)
        return found != -1 if name == "includes" else found
    if name in ("join", "toString"):
        sep = to_text(args[0]) if name == "join" and args and args[0] is not None else ","
        return _checked_text(sep.join("" if v is None else to_text(v) for v in value))
    if name == "slice":
        start = _integer(args[0]) if args else 0
        end = _integer(args[1]) if len(args) > 1 and args[1] is not None else None
        return value[start:end]
    if name == "concat":
        out = list(value)
        for a in args:
            out.extend(a if isinstance(a, list) else [a])
        return out
    if name == "at":
        index = _integer(args[0]) if args else 0
        return value[index] if -len(value) <= index < len(value) else None
    if name == "flat":
        return _flat(value, _integer(args[0]) if args and args[0] is not None else 1)
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
        for i, v in enumerate(items, start=len(value) - len(items)):  # indexes into `value`
            acc = _tick(budget, _call_fn(fn, acc, v, i))
        return acc
    raise ExpressionError(f"array method '{name}' is not supported")


def _flat(value: list[Any], depth: int) -> list[Any]:
    out: list[Any] = []
    for item in value:
        if isinstance(item, list) and depth > 0:
            out.extend(_flat(item, depth - 1))
        else:
            out.append(item)
    return out


def _same_value_zero(left: Any, right: Any) -> bool:
    nan = isinstance(left, float) and isinstance(right, float) and math.isnan(left)
    return strict_equals(left, right) or (nan and math.isnan(right))


def _tick(budget: _Budget, value: Any) -> Any:
    budget.tick()
    return value


_INDEX = re.compile(r"0|[1-9][0-9]*")


def _get_member(target: Any, key: Any) -> Any:
    if isinstance(target, dict):
        return target.get(to_text(key) if not isinstance(key, str) else key)
    if isinstance(target, list | str):
        if key == "length":
            return len(target)
        index = _index_of(key)
        return target[index] if index is not None and index < len(target) else None
    return None


def _index_of(key: Any) -> int | None:
    """The array index a key names: `1`, `1.0` and `'1'`, but not `1.5`, `'01'` or `-1`."""
    if isinstance(key, float) and key.is_integer():
        key = int(key)
    if isinstance(key, int) and not isinstance(key, bool):
        return key if key >= 0 else None
    if isinstance(key, str) and _INDEX.fullmatch(key):
        return int(key)
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
                    result.update(_own_entries(self.evaluate(value, scope)))
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
            return self.evaluate(node.body, Layered(scope, values))

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
                if a == 0 or math.isnan(a):
                    return math.nan
                return math.copysign(math.inf, a) * math.copysign(1.0, b)  # 1 / -0 is -Infinity
            return _number_result(a / b)
        if op == "%":
            return math.nan if b == 0 or math.isinf(a) else _number_result(math.fmod(a, b))
        raise ExpressionError(f"unknown operator {op}")

    def call(self, node: Call, scope: Scope) -> Any:
        args = [self.evaluate(a, scope) for a in node.args]
        target = node.target
        if isinstance(target, Member):
            receiver = self.evaluate(target.target, scope)
            name = self.evaluate(target.key, scope)
            if receiver is None and _optional_chain(target):
                return None  # `a?.b.c()` short-circuits the whole chain
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
                    return _to_fixed(float(receiver), _integer(args[0]) if args else 0)
                return _radix_text(receiver, _integer(args[0]) if args and args[0] else 10)
            raise ExpressionError(f"'{to_text(name)}' is not a supported method here")
        fn = self.evaluate(target, scope)
        if isinstance(fn, _Function):
            return fn(*args)
        raise ExpressionError("only built-in functions can be called")


def _optional_chain(node: Member) -> bool:
    """Whether a `?.` precedes this member in its chain (`a?.b.c`)."""
    part: Any = node
    while isinstance(part, Member | Call):
        if isinstance(part, Member) and part.optional:
            return True
        part = part.target
    return False


def _to_fixed(value: float, digits: int) -> str:
    """JS `toFixed`: the exact binary value rounded half away from zero (2.5 gives "3")."""
    if not math.isfinite(value) or abs(value) >= 1e21:
        return to_text(value)
    digits = max(0, min(digits, 100))
    exact = Decimal(abs(value) if value == 0 else value)  # (-0).toFixed() is "0"
    rounded = exact.quantize(Decimal(1).scaleb(-digits), ROUND_HALF_UP, Context(prec=200))
    return format(rounded, "f")


def _radix_text(value: float, radix: int) -> str:
    """JS `toString(radix)`, for the whole numbers that both spell exactly (below 2**53)."""
    if radix == 10 or not math.isfinite(value):
        return to_text(value)
    if not 2 <= radix <= 36:
        raise ExpressionError("toString() radix must be between 2 and 36")
    if not float(value).is_integer() or abs(value) >= 2**53:
        raise ExpressionError("toString(radix) supports whole numbers below 2**53 only")
    number, digits = abs(int(value)), ""
    while True:
        number, digit = divmod(number, radix)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + digits
        if not number:
            break
    return "-" + digits if value < 0 else digits


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
