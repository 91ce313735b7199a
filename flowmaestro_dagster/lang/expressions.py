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

Budgets (`Limits`, from FLOWMAESTRO_EXPRESSION_MAX_STEPS / _MAX_SIZE): an evaluation counts
steps (one per operation or call, one per 10 elements a built-in walks, one per 1,000
characters or slots it copies) and measures every string, list and object it builds, in about
bytes (1 a character, 8 a list or object element, with everything nested in it; a shared part
counts each time it appears, as it would in the value's JSON). Past either limit it raises
`ExpressionBudgetError`, before the big value exists where its size is known in advance.
Without budgets, `reduce` + `concat` doubles a list each step and `[acc, acc]` doubles what
the result's JSON weighs: one definition could exhaust a worker or the API process.
"""

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Context, Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from flowmaestro_dagster.errors import ExpressionBudgetError, ExpressionError

if TYPE_CHECKING:
    from flowmaestro_dagster.settings import Settings

MAX_EXPRESSION_LENGTH = 20_000
MAX_NESTING = 64  # brackets, calls and arrows inside one another (the parser recurses on them)
MAX_TREE_DEPTH = 128  # the parsed tree (`a + b + ...` chains, `!!!x`): evaluation recurses on it
MAX_VALUE_DEPTH = 200  # lists/objects inside one another (as a definition's JSON: spec/parse.py)
DEFAULT_MAX_STEPS = 200_000  # FLOWMAESTRO_EXPRESSION_MAX_STEPS
DEFAULT_MAX_SIZE = 10_000_000  # FLOWMAESTRO_EXPRESSION_MAX_SIZE
ELEMENTS_PER_STEP = 10  # elements a built-in walks in Python, per step
COPIES_PER_STEP = 1_000  # characters or list slots copied in C, per step
ELEMENT_SIZE = 8  # what a list or object element (a slot) adds to a value's size; a character: 1


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

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise ExpressionBudgetError(f"expression nested more than {MAX_NESTING} levels deep")

    def expression(self) -> Any:
        self.nest()
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
        prefix = token.kind == "op" and token.text in ("!", "-", "+")
        if not (prefix or (token.kind == "name" and token.text == "typeof")):
            return self.postfix(self.primary())
        self.advance()
        self.nest()  # `!!!!x` recurses here without passing through `expression`
        try:
            return Unary(token.text, self.unary())
        finally:
            self.depth -= 1

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
        raise ExpressionBudgetError(f"expression longer than {MAX_EXPRESSION_LENGTH} characters")
    if not text.strip():
        raise ExpressionError("empty expression")
    try:
        tree = _Parser(text).parse()
    except RecursionError:  # MAX_NESTING keeps the parser far from it: a last resort
        raise ExpressionBudgetError("expression nested too deeply") from None
    if _tree_depth(tree) > MAX_TREE_DEPTH:
        # `a + b + c ...` and `a.b.c ...` are loops when parsed but nest in the tree, and
        # evaluating recurses on the tree.
        raise ExpressionBudgetError(f"expression nested more than {MAX_TREE_DEPTH} levels deep")
    return tree


def _tree_depth(root: Any) -> int:
    deepest = 0
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in _parts(node))
    return deepest


def _parts(node: Any) -> tuple[Any, ...]:
    """The sub-expressions of a tree node."""
    kind = type(node)
    if kind is Member:
        return (node.target, node.key)
    if kind is Call:
        return (node.target, *node.args)
    if kind is Unary:
        return (node.operand,)
    if kind is Binary:
        return (node.left, node.right)
    if kind is Conditional:
        return (node.test, node.then, node.otherwise)
    if kind is ArrayLit:
        return node.items
    if kind is ObjectLit:
        return tuple(part for entry in node.entries for part in entry if part is not None)
    if kind is Arrow:
        return (node.body,)
    return ()


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
    """A callable value: an arrow function, or a built-in (`budgeted` ones take the budget)."""

    def __init__(self, fn: Callable[..., Any], *, budgeted: bool = False) -> None:
        self.fn = fn
        self.budgeted = budgeted

    def invoke(self, budget: "Budget", args: Sequence[Any]) -> Any:
        return self.fn(budget, *args) if self.budgeted else self.fn(*args)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one evaluation may spend: `max_steps` of work, values of at most `max_size`."""

    max_steps: int = DEFAULT_MAX_STEPS
    max_size: int = DEFAULT_MAX_SIZE

    @classmethod
    def from_settings(cls, settings: "Settings") -> "Limits":
        """FLOWMAESTRO_EXPRESSION_MAX_STEPS and FLOWMAESTRO_EXPRESSION_MAX_SIZE."""
        return cls(settings.expression_max_steps, settings.expression_max_size)


class Budget:
    """The work done and the values built so far by one evaluation, against its `Limits`.

    One budget may be shared by several evaluations (every reference of a template, every
    template a node renders) so that many small expressions cannot add up to a large one.
    Sizes of the lists and objects it has seen are kept (by identity: they stay referenced
    here) so that a value nested in the next one is not walked again.
    """

    __slots__ = ("_sizes", "limits", "steps")

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.steps = 0
        self._sizes: dict[int, tuple[Any, int, int]] = {}  # id -> (value, size, depth)

    def tick(self, steps: int = 1) -> None:
        self.steps += steps
        if self.steps > self.limits.max_steps:
            raise ExpressionBudgetError(
                f"expression did more than {self.limits.max_steps} steps "
                "(FLOWMAESTRO_EXPRESSION_MAX_STEPS)"
            )

    def walked(self, elements: int) -> None:
        """A built-in walked `elements` elements in Python."""
        if elements >= ELEMENTS_PER_STEP:
            self.tick(elements // ELEMENTS_PER_STEP)

    def copied(self, units: int) -> None:
        """A built-in copied `units` characters or list slots (C speed)."""
        if units >= COPIES_PER_STEP:
            self.tick(units // COPIES_PER_STEP)

    def _too_big(self, size: int) -> ExpressionBudgetError:
        return ExpressionBudgetError(
            f"expression built a value larger than {self.limits.max_size} "
            f"(FLOWMAESTRO_EXPRESSION_MAX_SIZE, about bytes: 1 a character, {ELEMENT_SIZE} a "
            f"list or object element; this one: {size} or more)"
        )

    def room(self, size: int) -> None:
        """Refuse, before building it, a value that would be larger than `max_size`."""
        if size > self.limits.max_size:
            raise self._too_big(size)

    def text(self, text: str) -> str:
        """A string just built: within `max_size`, its copying counted."""
        self.room(len(text))
        self.copied(len(text))
        return text

    def text_of(self, value: Any) -> str:
        """`to_text`, measuring a list or object first (JSON of a shared part is repeated)."""
        if isinstance(value, list | dict):
            self.measure(value)
            return self.text(to_text(value))
        return to_text(value)

    def result(self, value: Any) -> Any:
        """What a built-in returned: strings and containers checked against the limits."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list | dict):
            self.measure(value)
        return value

    def remember(self, value: Any, size: int, depth: int) -> Any:
        """A container built from parts whose sizes are known (`concat`, `reverse`)."""
        self.room(size)
        if depth > MAX_VALUE_DEPTH:
            raise self._too_deep()
        self._sizes[id(value)] = (value, size, depth)
        return value

    def _too_deep(self) -> ExpressionBudgetError:
        return ExpressionBudgetError(
            f"expression met a list or object nested deeper than {MAX_VALUE_DEPTH} levels"
        )

    def size_of(self, value: Any) -> tuple[int, int]:
        """(size, depth) of a value, measuring it when it is a container not seen yet."""
        if isinstance(value, str):
            return len(value), 0
        if not isinstance(value, list | dict):
            return 0, 0  # a number, boolean or null: its slot is counted by its container
        known = self._sizes.get(id(value))
        if known is not None and known[0] is value:
            return known[1], known[2]
        return self.measure(value)

    def measure(self, value: Any) -> tuple[int, int]:
        """(size, depth) of a list or object, without recursion, stopping as soon as it passes
        `max_size` or `MAX_VALUE_DEPTH`; every container in it is remembered."""
        known = self._sizes.get(id(value))
        if known is not None and known[0] is value:
            return known[1], known[2]
        limit = self.limits.max_size
        sizes = self._sizes
        # Frames: [container, iterator over its children, size so far, deepest child so far].
        stack: list[list[Any]] = [[value, _children(value), _own_size(value), 0]]
        walked = 0
        result = (0, 0)
        while stack:
            frame = stack[-1]
            size, deepest = frame[2], frame[3]
            descend = None
            for child in frame[1]:
                walked += 1
                cls = type(child)
                if cls is str:
                    size += len(child)
                elif cls is list or cls is dict or isinstance(child, list | dict):
                    known = sizes.get(id(child))
                    if known is None or known[0] is not child:
                        descend = child
                        break
                    size += known[1]
                    deepest = known[2] if known[2] > deepest else deepest
                elif isinstance(child, str):  # `$now`
                    size += len(child)
                if size > limit:
                    raise self._too_big(size)
            frame[2], frame[3] = size, deepest
            if descend is not None:
                if len(stack) >= MAX_VALUE_DEPTH:
                    raise self._too_deep()
                stack.append([descend, _children(descend), _own_size(descend), 0])
                continue
            stack.pop()
            depth = deepest + 1
            if depth > MAX_VALUE_DEPTH:
                raise self._too_deep()
            sizes[id(frame[0])] = (frame[0], size, depth)
            if stack:
                parent = stack[-1]
                parent[2] += size
                parent[3] = max(parent[3], depth)
                if parent[2] > limit:
                    raise self._too_big(parent[2])
            else:
                result = (size, depth)
            if walked >= 100_000:
                self.walked(walked)  # a huge input costs steps while it is walked, not after
                walked = 0
        self.walked(walked)
        return result


def _children(value: Any) -> Iterator[Any]:
    return iter(value.values() if isinstance(value, dict) else value)


def _own_size(value: Any) -> int:
    """A container's own share of its size: itself and a slot per element (and key text)."""
    size = ELEMENT_SIZE * (1 + len(value))
    if isinstance(value, dict):
        size += sum(len(k) for k in value if isinstance(k, str))
    return size


class Layered:
    """`values` layered over the outer scope (arrow-function parameters, a node's variables)."""

    def __init__(self, outer: Scope, values: Mapping[str, Any]) -> None:
        self.outer = outer
        self.values = values

    def lookup(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        return self.outer.lookup(name)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_parse(budget: Budget, text: Any = None) -> Any:
    source = budget.text_of(text)
    budget.room(len(source))  # the value is about as large as its text
    budget.copied(len(source))
    try:
        return json.loads(source, parse_constant=_reject_constant)
    except ValueError as exc:
        raise ExpressionError(f"JSON.parse: {exc}") from exc
    except RecursionError:
        raise ExpressionBudgetError("JSON.parse: the text is nested too deeply") from None


def _json_stringify(
    budget: Budget, value: Any = None, _replacer: Any = None, space: Any = None
) -> str | None:
    """JS `JSON.stringify`: compact (`{"a":1}`) unless `space` is given, JS number spelling."""
    if isinstance(space, int | float) and not isinstance(space, bool):
        indent = " " * max(0, min(10, int(space))) if math.isfinite(space) else ""
    else:
        indent = space[:10] if isinstance(space, str) else ""
    if isinstance(value, _Function):
        return None
    writer = _JsonWriter(budget, indent)
    writer.write(value, "\n")
    return "".join(writer.out)


class _JsonWriter:
    """JSON text written piece by piece, so indentation cannot grow it past `max_size` unseen."""

    def __init__(self, budget: Budget, indent: str) -> None:
        self.budget = budget
        self.indent = indent
        self.out: list[str] = []
        self.size = 0

    def put(self, text: str) -> None:
        self.size += len(text)
        self.budget.room(self.size)
        self.out.append(text)

    def write(self, value: Any, newline: str) -> None:
        if value is None or isinstance(value, bool | str):
            self.put(json.dumps(value, ensure_ascii=False))
        elif isinstance(value, float):
            self.put(_number_text(value) if math.isfinite(value) else "null")
        elif isinstance(value, int):
            self.put(str(value))
        elif isinstance(value, list):
            self._container("[", [(None, item) for item in value], "]", newline)
        elif isinstance(value, dict):
            kept = [(k, v) for k, v in value.items() if not isinstance(v, _Function)]
            self._container("{", kept, "}", newline)
        else:
            self.put(json.dumps(str(value), ensure_ascii=False))

    def _container(
        self, start: str, entries: list[tuple[Any, Any]], end: str, newline: str
    ) -> None:
        if not entries:
            self.put(start + end)
            return
        inner = newline + self.indent
        self.put(start)
        for index, (key, item) in enumerate(entries):
            if index:
                self.put(",")
            if self.indent:
                self.put(inner)
            if key is not None:
                self.put(json.dumps(str(key), ensure_ascii=False) + (": " if self.indent else ":"))
            if isinstance(item, _Function):
                self.put("null")  # only list items get here: object keys of functions are left out
            else:
                self.write(item, inner)
        if self.indent:
            self.put(newline)
        self.put(end)


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
        "keys": _Function(lambda b, o=None: [k for k, _ in _own_entries(o, b)], budgeted=True),
        "values": _Function(lambda b, o=None: [v for _, v in _own_entries(o, b)], budgeted=True),
        "entries": _Function(
            lambda b, o=None: [[k, v] for k, v in _own_entries(o, b)], budgeted=True
        ),
    },
    "JSON": {
        "stringify": _Function(_json_stringify, budgeted=True),
        "parse": _Function(_json_parse, budgeted=True),
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
    "String": _Function(lambda b, v="": b.text_of(v), budgeted=True),
    "Boolean": _Function(lambda v=None: truthy(v)),
    "parseInt": _Function(_parse_int),
    "parseFloat": _Function(_parse_float),
    "isNaN": _Function(lambda v: math.isnan(to_number(v))),
}


def _own_entries(value: Any, budget: Budget) -> list[tuple[str, Any]]:
    """Own enumerable properties, as `Object.entries` and `{...x}` see them (lists by index)."""
    if isinstance(value, dict | list | str):
        budget.walked(len(value))  # before building: `{...text}` makes an entry per character
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


def _substitute(
    replacement: str, matched: str, position: int, text: str, budget: Budget, used: int
) -> str:
    """The `$$ $& $` $'` patterns of a `replace` replacement string (`used`: characters the
    result already has; each pattern may copy most of `text`, so sizes are checked first)."""
    if "$" not in replacement:
        return replacement
    after = position + len(matched)
    sizes = {"$": 1, "&": len(matched), "`": position, "'": len(text) - after}
    out = []
    pos = 0
    while pos < len(replacement):
        nxt = replacement[pos + 1 : pos + 2]
        if replacement[pos] == "$" and nxt in sizes:
            used += sizes[nxt]
            budget.room(used)
            out.append({"$": "$", "&": matched, "`": text[:position], "'": text[after:]}[nxt])
            pos += 2
        else:
            used += 1
            out.append(replacement[pos])
            pos += 1
    return "".join(out)


def _string_method(value: str, name: str, args: list[Any], budget: Budget) -> Any:
    size = len(value)
    search = budget.text_of(args[0]) if args else "undefined"
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
        budget.walked(size if search == "" else value.count(search))  # before the pieces exist
        parts = list(value) if search == "" else value.split(search)
        if len(args) > 1 and args[1] is not None:
            limit = to_number(args[1])
            parts = parts[: int(limit) % 2**32 if math.isfinite(limit) else 0]
        return parts
    if name in ("replace", "replaceAll"):
        if len(args) < 2:
            return value
        new = budget.text_of(args[1])
        if name == "replaceAll":
            budget.walked(size if search == "" else value.count(search))
        positions = []
        pos = value.find(search)
        while pos != -1:
            positions.append(pos)
            if name == "replace":
                break
            pos = value.find(search, pos + max(len(search), 1))
        out = []
        used = 0
        end = 0
        for pos in positions:
            used += pos - end
            out.append(value[end:pos])
            piece = _substitute(new, search, pos, value, budget, used)
            used += len(piece)
            budget.room(used)
            out.append(piece)
            end = pos + len(search)
        budget.room(used + size - end)
        out.append(value[end:])
        return "".join(out)
    if name == "charAt":
        index = _integer(args[0]) if args else 0
        return value[index] if 0 <= index < size else ""
    if name == "concat":
        pieces = [value, *(budget.text_of(a) for a in args)]
        budget.room(sum(len(piece) for piece in pieces))
        return "".join(pieces)
    if name == "toString":
        return value
    if name in ("padStart", "padEnd"):
        width = _integer(args[0]) if args else 0
        fill = budget.text_of(args[1]) if len(args) > 1 else " "
        if width <= size or not fill:
            return value
        budget.room(width)  # before the padding exists
        pad = (fill * ((width - size) // len(fill) + 1))[: width - size]
        return pad + value if name == "padStart" else value + pad
    raise ExpressionError(f"string method '{name}' is not supported")


def _call_fn(budget: Budget, fn: Any, *args: Any) -> Any:
    if not isinstance(fn, _Function):
        raise ExpressionError("expected a function (for example item => item.score)")
    return fn.invoke(budget, args)


def _array_method(value: list[Any], name: str, args: list[Any], budget: Budget) -> Any:
    fn = args[0] if args else None
    if name in ("includes", "indexOf"):
        start = _integer(args[1]) if len(args) > 1 else 0
        start = max(len(value) + start, 0) if start < 0 else start
        search = args[0] if args else None
        # Each comparison may be as deep as the list's elements: count them all.
        budget.walked(budget.size_of(value)[0] if isinstance(search, list | dict) else len(value))
        # includes is SameValueZero ([NaN].includes(NaN)); indexOf is ===
        same = _same_value_zero if name == "includes" else strict_equals
        found = next((i for i in range(start, len(value)) if same(value[i], search)), -1)
        return found != -1 if name == "includes" else found
    if name in ("join", "toString"):
        sep = budget.text_of(args[0]) if name == "join" and args and args[0] is not None else ","
        budget.walked(len(value))
        pieces = ["" if v is None else budget.text_of(v) for v in value]
        budget.room(sum(len(piece) for piece in pieces) + len(sep) * max(len(pieces) - 1, 0))
        return sep.join(pieces)
    if name == "slice":
        start = _integer(args[0]) if args else 0
        end = _integer(args[1]) if len(args) > 1 and args[1] is not None else None
        return value[start:end]
    if name == "concat":
        size, depth = budget.size_of(value)
        for a in args:
            part, part_depth = budget.size_of(a)
            if isinstance(a, list):  # its elements join: all of it but its own slot
                size, depth = size + part - ELEMENT_SIZE, max(depth, part_depth)
            else:
                size, depth = size + ELEMENT_SIZE + part, max(depth, part_depth + 1)
        budget.room(size)  # before the copy: `acc.concat(acc)` doubles
        out = list(value)
        for a in args:
            out.extend(a if isinstance(a, list) else [a])
        budget.copied(len(out))
        return budget.remember(out, size, depth)
    if name == "at":
        index = _integer(args[0]) if args else 0
        return value[index] if -len(value) <= index < len(value) else None
    if name == "flat":
        budget.walked(budget.size_of(value)[0])
        return _flat(value, _integer(args[0]) if args and args[0] is not None else 1)
    if name == "reverse":
        budget.copied(len(value))
        return budget.remember(list(reversed(value)), *budget.size_of(value))
    if name == "map":
        return [_tick(budget, _call_fn(budget, fn, v, i)) for i, v in enumerate(value)]
    if name == "filter":
        return [v for i, v in enumerate(value) if truthy(_tick(budget, _call_fn(budget, fn, v, i)))]
    if name == "find":
        return next((v for i, v in enumerate(value) if truthy(_call_fn(budget, fn, v, i))), None)
    if name == "findIndex":
        return next((i for i, v in enumerate(value) if truthy(_call_fn(budget, fn, v, i))), -1)
    if name == "some":
        return any(truthy(_tick(budget, _call_fn(budget, fn, v, i))) for i, v in enumerate(value))
    if name == "every":
        return all(truthy(_tick(budget, _call_fn(budget, fn, v, i))) for i, v in enumerate(value))
    if name == "reduce":
        items = list(value)
        if len(args) > 1:
            acc = args[1]
        elif items:
            acc = items.pop(0)
        else:
            raise ExpressionError("reduce of an empty array with no initial value")
        for i, v in enumerate(items, start=len(value) - len(items)):  # indexes into `value`
            acc = _tick(budget, _call_fn(budget, fn, acc, v, i))
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


def _tick(budget: Budget, value: Any) -> Any:
    budget.tick()
    return value


_INDEX = re.compile(r"0|[1-9][0-9]*")


# An LLM node's reply (docs/semantics.md, "Fields of an LLM's JSON answer").
REPLY_KEYS = frozenset({"text", "model"})
MAX_REPLY_JSON_CHARS = 1_000_000
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?```\s*$", re.DOTALL)


def reply_fields(target: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The JSON object an LLM reply's `text` holds, so `{{analysis.score}}` reads a reply
    whose text is `{"score": 8}` (optionally in a ```json fence); None for anything else.

    Prompts in real workflows ask for JSON and read its fields; the reply object keeps its own
    keys (`text`, `usage`, `model`, `provider`) first."""
    text = target.get("text")
    if not isinstance(text, str) or not target.keys() >= REPLY_KEYS:
        return None
    if len(text) > MAX_REPLY_JSON_CHARS or "{" not in text:
        return None
    return _parsed_reply(text)


@lru_cache(maxsize=64)
def _parsed_reply(text: str) -> Mapping[str, Any] | None:
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    if not body.startswith("{"):
        start, end = body.find("{"), body.rfind("}")
        if start < 0 or end <= start:
            return None
        body = body[start : end + 1]
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _get_member(target: Any, key: Any, budget: Budget) -> Any:
    if isinstance(target, dict):
        name = budget.text_of(key) if not isinstance(key, str) else key
        if name not in target and (fields := reply_fields(target)) is not None:
            return fields.get(name)
        return target.get(name)
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
    """Evaluates a parsed expression against a scope of names, on a `Budget`.

    With `lenient`, a name nothing provides is `undefined` (None) instead of an error: a
    condition may read the output of a branch that did not run. Without a `budget`, the
    evaluator has its own with the default limits: there is no unbudgeted evaluation.
    """

    def __init__(
        self, scope: Scope, *, lenient: bool = False, budget: Budget | None = None
    ) -> None:
        self.scope = scope
        self.lenient = lenient
        self.unresolved: list[str] = []
        self.budget = budget if budget is not None else Budget()

    def evaluate(self, node: Any, scope: Scope | None = None) -> Any:
        """The value of a parsed expression; `ExpressionBudgetError` past the budget."""
        try:
            return self._eval(node, scope or self.scope)
        except RecursionError:
            # Parsed trees are shallow (MAX_TREE_DEPTH); values read from the scope may not be.
            raise ExpressionBudgetError(
                "expression nested too deeply (or read a value nested too deeply)"
            ) from None

    def _eval(self, node: Any, scope: Scope) -> Any:
        budget = self.budget
        budget.tick()
        kind = type(node)
        if kind is Literal:
            return node.value
        if kind is Name:
            return self.lookup(node.name, scope)
        if kind is Member:
            target = self._eval(node.target, scope)
            if target is None:
                return None
            return _get_member(target, self._eval(node.key, scope), budget)
        if kind is Binary:
            return self.binary(node, scope)
        if kind is Unary:
            try:
                value = self._eval(node.operand, scope)
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
            branch = node.then if truthy(self._eval(node.test, scope)) else node.otherwise
            return self._eval(branch, scope)
        if kind is Call:
            return self.call(node, scope)
        if kind is ArrayLit:
            return budget.result([self._eval(item, scope) for item in node.items])
        if kind is ObjectLit:
            result: dict[str, Any] = {}
            for key, value in node.entries:
                if key is None:
                    result.update(_own_entries(self._eval(value, scope), budget))
                else:
                    result[budget.text_of(self._eval(key, scope))] = self._eval(value, scope)
            return budget.result(result)
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
            return self._eval(node.body, Layered(scope, values))

        return _Function(run)

    def binary(self, node: Binary, scope: Scope) -> Any:
        op = node.op
        left = self._eval(node.left, scope)
        if op == "&&":
            return self._eval(node.right, scope) if truthy(left) else left
        if op == "||":
            return left if truthy(left) else self._eval(node.right, scope)
        if op == "??":
            return left if left is not None else self._eval(node.right, scope)
        right = self._eval(node.right, scope)
        if op in ("==", "!=", "===", "!==") and _both_containers(left, right):
            # Lists and objects compare by value: as deep as the smaller of the two.
            self.budget.walked(min(self.budget.size_of(left)[0], self.budget.size_of(right)[0]))
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
            text = (isinstance(left, str) or isinstance(right, str)) and not timestamp
            if text or isinstance(left, list | dict) or isinstance(right, list | dict):
                first, second = self.budget.text_of(left), self.budget.text_of(right)
                self.budget.room(len(first) + len(second))  # before the copy: `s + s` doubles
                return self.budget.text(first + second)
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
        budget = self.budget
        args = [self._eval(a, scope) for a in node.args]
        for arg in args:
            if isinstance(arg, list | dict):
                budget.size_of(arg)  # built-ins may walk or print it: measured (cached) first
        target = node.target
        if isinstance(target, Member):
            receiver = self._eval(target.target, scope)
            name = self._eval(target.key, scope)
            if receiver is None and _optional_chain(target):
                return None  # `a?.b.c()` short-circuits the whole chain
            if isinstance(receiver, dict) and isinstance(receiver.get(name), _Function):
                return budget.result(receiver[name].invoke(budget, args))
            if isinstance(receiver, str):
                return budget.result(_string_method(receiver, to_text(name), args, budget))
            if isinstance(receiver, list):
                budget.size_of(receiver)
                return budget.result(_array_method(receiver, to_text(name), args, budget))
            if isinstance(receiver, dict) and name == "hasOwnProperty":
                return bool(args) and budget.text_of(args[0]) in receiver
            if isinstance(receiver, int | float) and name in ("toFixed", "toString"):
                if name == "toFixed":
                    return _to_fixed(float(receiver), _integer(args[0]) if args else 0)
                return _radix_text(receiver, _integer(args[0]) if args and args[0] else 10)
            raise ExpressionError(f"'{to_text(name)}' is not a supported method here")
        fn = self._eval(target, scope)
        if isinstance(fn, _Function):
            return budget.result(fn.invoke(budget, args))
        raise ExpressionError("only built-in functions can be called")


def _both_containers(left: Any, right: Any) -> bool:
    return isinstance(left, list | dict) and isinstance(right, list | dict)


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


def evaluate(
    text: str, scope: Scope, *, lenient: bool = False, budget: Budget | None = None
) -> Any:
    """Parse (cached) and evaluate an expression (on `budget`, else on the default limits)."""
    return Evaluator(scope, lenient=lenient, budget=budget).evaluate(parse(text))


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
