"""User-supplied regular expressions, run by RE2 under a budget: never a backtracking engine.

Definitions and the people who answer approvals are not trusted. Python's `re` backtracks, so
`(a+)+$` against `"a" * 30 + "!"` runs for minutes while holding the GIL: one approval
response stalled the whole API, `/health` included (issue 15). RE2 (`google-re2`) never
backtracks: a match costs at most about (text length x compiled pattern size), and it releases
the GIL while it runs. Every pattern a workflow or a request supplies is compiled here —
humanReview `validation.pattern`, switch wildcards, JSONata regex literals in transform nodes —
with three budgets: the pattern's length, its compiled size, and text x size for one match
(plus a clock on iterations: `finditer`, `sub`, `split`). Breaking one is a `PatternError`.

RE2 refuses what needs backtracking: backreferences (`\\1`, `\\k<name>`), lookahead and
lookbehind (`(?=`, `(?!`, `(?<=`, `(?<!`), atomic groups and possessive quantifiers.
`pattern_problem` says why, so validation rejects such a pattern when a workflow is deployed.

Valid patterns mean what they meant with `re`, except (RE2 is the closer to JavaScript, whose
syntax JSONata regex literals use):
* `\\d`, `\\w`, `\\b` and `\\s` are ASCII-only (Python: Unicode; JavaScript: ASCII, but its
  `\\s` takes Unicode spaces too);
* `$` (without `m`) matches only at the very end, not before a final newline (as JavaScript);
  `\\Z` is spelled `\\z`;
* named groups may be written `(?P<name>...)` or, as in JavaScript, `(?<name>...)`;
* a counted repetition is at most `{1000}` (nested counts multiply).
"""

import re
import time
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from typing import Any, Protocol

import re2  # type: ignore[import-untyped]  # google-re2 ships no type information

from flowmaestro_dagster.errors import PatternError

__all__ = [
    "MAX_MATCH_SECONDS",
    "MAX_PATTERN_LENGTH",
    "MAX_PROGRAM_SIZE",
    "MAX_WORK",
    "Pattern",
    "compile_pattern",
    "jsonata_regex_engine",
    "pattern_problem",
    "wildcard",
]

MAX_PATTERN_LENGTH = 1_000
MAX_PROGRAM_SIZE = 2_000  # RE2 instructions: `\w{600}` is ~1800
# Characters x instructions for one match. RE2's slowest path (its NFA, when the DFA runs out
# of memory) takes ~15 ns a unit here, so one call stays under a second whatever the pattern.
MAX_WORK = 50_000_000
MAX_MATCH_SECONDS = 2.0  # matching time of one finditer / sub / split over all its matches

_LOOKAROUND = ("(?=", "(?!", "(?<=", "(?<!")
_BACKREFERENCE = re.compile(r"invalid escape sequence: \\([1-9]|k)")


class Pattern:
    """A compiled user pattern: `matches` (the whole text, yes or no) for checks, and the
    `re.Pattern` methods JSONata calls (`search`, `finditer`, `sub`, `split`), all budgeted."""

    def __init__(self, source: str, compiled: Any, *, test: Any) -> None:
        self.pattern = source
        self._compiled = compiled  # with capture groups: spans for search / finditer / sub
        self._test = test  # without them: RE2's DFA answers a yes / no alone, much faster
        self.groups: int = compiled.groups
        self.groupindex: Mapping[str, int] = compiled.groupindex
        self.cost = max(int(compiled.programsize), 1)

    def __repr__(self) -> str:
        return f"Pattern({self.pattern!r})"

    def _budget(self, text: str) -> None:
        if len(text) * self.cost > MAX_WORK:
            raise PatternError(
                f"the text ({len(text)} characters) is too long to match against this pattern "
                f"(at most {MAX_WORK // self.cost} characters for it)"
            )

    def matches(self, text: str) -> bool:
        """Whether the whole text matches (`re.fullmatch`)."""
        self._budget(text)
        return self._test.fullmatch(text) is not None

    def search(self, text: str) -> Any:
        """The first match (an `re.Match`-like object), or None."""
        self._budget(text)
        return self._compiled.search(text)

    def finditer(self, text: str) -> Iterator[Any]:
        """Every match, left to right (empty ones included, as `re`); the engine's time over
        all of them is bounded by MAX_MATCH_SECONDS (each search may rescan the rest)."""
        self._budget(text)
        found = self._compiled.finditer(text)
        spent = 0.0
        while True:
            started = time.monotonic()
            match = next(found, None)
            spent += time.monotonic() - started
            if spent > MAX_MATCH_SECONDS:
                raise PatternError(f"matching took more than {MAX_MATCH_SECONDS:g} s")
            if match is None:
                return
            yield match

    def sub(self, repl: str | Callable[[Any], str], text: str, count: int = 0) -> str:
        """`re.sub`: `repl` is a function of the match or an `re` template (`\\g<1>`, `\\1`)."""
        expand = repl if callable(repl) else _template(repl, self)
        out: list[str] = []
        end = 0
        for done, match in enumerate(self.finditer(text)):
            if count and done >= count:
                break
            out.append(text[end : match.start()])
            out.append(expand(match))
            end = match.end()
        out.append(text[end:])
        return "".join(out)

    def split(self, text: str, maxsplit: int = 0) -> list[str | None]:
        """`re.split`: the pieces between matches, and each match's groups between them."""
        pieces: list[str | None] = []
        end = 0
        for done, match in enumerate(self.finditer(text)):
            if maxsplit and done >= maxsplit:
                break
            pieces.append(text[end : match.start()])
            pieces.extend(match.group(g) for g in range(1, self.groups + 1))
            end = match.end()
        pieces.append(text[end:])
        return pieces


def _explain(raw: object) -> str:
    """RE2's complaint, saying which backtracking feature it was when it was one."""
    message = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    if _BACKREFERENCE.search(message) or "perl operator: (?P" in message:
        why = "backreferences (\\1, \\k<name>, (?P=name)) are not supported"
    elif any(marker in message for marker in _LOOKAROUND):
        why = "lookahead and lookbehind ((?=, (?!, (?<=, (?<!) are not supported"
    elif "(?>" in message or re.search(r"repetition operator: [*+?}]\+", message):
        why = "atomic groups and possessive quantifiers are not supported"
    elif "\\Z" in message:
        return "\\Z is not supported: write \\z for the end of the text"
    else:
        return f"not a valid regular expression: {message}"
    return f"{why}: patterns run on RE2, which never backtracks ({message})"


@lru_cache(maxsize=256)
def _compile(source: str, ignore_case: bool, dot_all: bool, multiline: bool) -> Pattern:
    if len(source) > MAX_PATTERN_LENGTH:
        raise PatternError(f"the pattern is longer than {MAX_PATTERN_LENGTH} characters")
    flags = ("s" if dot_all else "") + ("m" if multiline else "")
    text = f"(?{flags}){source}" if flags else source

    def options(*, captures: bool) -> Any:
        opts = re2.Options()
        opts.log_errors = False  # the error is ours to report, not stderr's
        opts.case_sensitive = not ignore_case
        opts.never_capture = not captures
        return opts

    try:
        compiled = re2.compile(text, options(captures=True))
        test = re2.compile(text, options(captures=False))
    except re2.error as exc:
        raise PatternError(_explain(exc.args[0] if exc.args else exc)) from None
    if compiled.programsize > MAX_PROGRAM_SIZE:
        raise PatternError(
            f"the pattern is too large: {compiled.programsize} RE2 instructions "
            f"(at most {MAX_PROGRAM_SIZE}; lower the repetition counts)"
        )
    return Pattern(source, compiled, test=test)


def compile_pattern(
    source: str, *, ignore_case: bool = False, dot_all: bool = False, multiline: bool = False
) -> Pattern:
    """The pattern compiled by RE2 (cached), or `PatternError` saying why it cannot be."""
    if not isinstance(source, str):
        raise PatternError(f"a pattern must be a string, not {type(source).__name__}")
    return _compile(source, ignore_case, dot_all, multiline)


def pattern_problem(source: Any) -> str | None:
    """Why `source` cannot be used as a pattern (for validation problems), or None."""
    try:
        compile_pattern(source)
    except PatternError as exc:
        return str(exc)
    return None


def wildcard(glob: str) -> Pattern:
    """A switch case's `*` / `?` wildcard: the whole text, any case, newlines included."""
    pieces: list[str] = []
    for ch in glob:
        if ch == "*":
            if pieces[-1:] != [".*"]:  # `**` is `*`: a shorter program, the same language
                pieces.append(".*")
        elif ch == "?":
            pieces.append(".")
        else:
            pieces.append(re2.escape(ch))
    return compile_pattern("".join(pieces), ignore_case=True, dot_all=True)


class _RegexFlags(Protocol):
    case_insensitive: bool
    multiline: bool


def jsonata_regex_engine(source: str, flags: _RegexFlags) -> Pattern:
    """`jsonata.Jsonata(expression, jsonata_regex_engine)`: JSONata's `/regex/im` literals on
    RE2 instead of `re` (jsonata-python's pluggable engine)."""
    return compile_pattern(
        source, ignore_case=bool(flags.case_insensitive), multiline=bool(flags.multiline)
    )


# -- replacement templates -----------------------------------------------------------------------

_TEMPLATE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
}
_OCTAL = "01234567"


def _template(template: str, pattern: Pattern) -> Callable[[Any], str]:
    """`re.sub`'s replacement syntax (`\\g<n>`, `\\g<name>`, `\\n`, `\\t`, ...) with `re`'s
    errors (JSONata retries on `invalid group reference N at position P`). RE2's own wrapper
    expands templates through `unicode_escape`, which garbles every non-ASCII character."""
    parts: list[str | int] = []
    i, size = 0, len(template)

    def group(index: int, at: int) -> None:
        if index > pattern.groups:
            raise re.error(f"invalid group reference {index}", template, at)
        parts.append(index)

    while i < size:
        ch = template[i]
        if ch != "\\":
            parts.append(ch)
            i += 1
            continue
        if i + 1 == size:
            raise re.error("bad escape (end of pattern)", template, i)
        nxt = template[i + 1]
        if nxt == "g":
            close = template.find(">", i + 3)
            if template[i + 2 : i + 3] != "<" or close == -1:
                raise re.error("missing group name", template, i + 2)
            name = template[i + 3 : close]
            if name.isidentifier():
                if name not in pattern.groupindex:
                    raise IndexError(f"unknown group name {name!r}")
                parts.append(pattern.groupindex[name])
            elif name.isdecimal() and name.isascii():
                group(int(name), i + 3)
            else:
                raise re.error(f"bad character in group name {name!r}", template, i + 3)
            i = close + 1
        elif nxt == "0":
            digits = 1
            while digits < 3 and i + 1 + digits < size and template[i + 1 + digits] in _OCTAL:
                digits += 1
            parts.append(chr(int(template[i + 1 : i + 1 + digits], 8) & 0xFF))
            i += 1 + digits
        elif nxt.isascii() and nxt.isdigit():
            octal = template[i + 1 : i + 4]
            if len(octal) == 3 and all(c in _OCTAL for c in octal):
                if int(octal, 8) > 0o377:
                    raise re.error(f"octal escape value \\{octal} outside of range 0-0o377")
                parts.append(chr(int(octal, 8)))
                i += 4
            else:
                second = template[i + 2 : i + 3]
                digits = 2 if second.isascii() and second.isdigit() else 1
                group(int(template[i + 1 : i + 1 + digits]), i + 1)
                i += 1 + digits
        elif nxt in _TEMPLATE_ESCAPES:
            parts.append(_TEMPLATE_ESCAPES[nxt])
            i += 2
        elif nxt.isascii() and nxt.isalpha():
            raise re.error(f"bad escape \\{nxt}", template, i)
        else:
            parts.append("\\" + nxt)
            i += 2

    def expand(match: Any) -> str:
        return "".join(p if isinstance(p, str) else (match.group(p) or "") for p in parts)

    return expand
