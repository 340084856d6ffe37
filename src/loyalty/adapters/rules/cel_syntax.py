"""Reading CEL source on our own, so fields can be checked against the context's schema.

The library compiles expressions but only reports which top-level variables they use, not the
fields they select, so field references are found here, in two steps:

* a tokenizer that never fails, whose tokens feed the size checks that must run *before* the
  library sees the source (text inside string literals is one token and counts for nothing);
* a parser, run on those tokens only once the library has accepted the source, that builds
  the small tree the schema checker walks.

Chains that can be long without any nesting (``a.b.c...``, ``x + y + z...``, ``!!!x``) are
kept flat in the tree, so walking it never recurses deeper than the source's nesting.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from loyalty.adapters.rules.errors import ExpressionError

MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
"""The comprehension macros: each walks a whole list."""

_OPENERS = frozenset("([{")
_CLOSERS = frozenset(")]}")
_RELATIONS = frozenset({"<", "<=", ">", ">=", "==", "!=", "in"})


class TokenKind(StrEnum):
    IDENT = "identifier"
    INT = "int"
    UINT = "uint"
    DOUBLE = "double"
    STRING = "string"
    BYTES = "bytes"
    PUNCTUATION = "punctuation"
    OTHER = "other"
    END = "end of input"


@dataclass(frozen=True, slots=True)
class Token:
    kind: TokenKind
    text: str
    start: int
    end: int


# CEL's lexical grammar, first match wins: triple quotes before single ones, strings before
# identifiers (for the r and b prefixes), doubles before ints ("1.e5" is 1 . e5, as in CEL).
_TRIPLE_SINGLE, _TRIPLE_DOUBLE = "'" * 3, '"' * 3
_RAW_BODY = (
    f"(?:{_TRIPLE_SINGLE}[\\s\\S]*?{_TRIPLE_SINGLE}|{_TRIPLE_DOUBLE}[\\s\\S]*?{_TRIPLE_DOUBLE}"
    "|'[^'\\n\\r]*'|\"[^\"\\n\\r]*\")"
)
_ESCAPE = r"\\[\s\S]"
_BODY = (
    f"(?:{_TRIPLE_SINGLE}(?:{_ESCAPE}|[^\\\\])*?{_TRIPLE_SINGLE}"
    f"|{_TRIPLE_DOUBLE}(?:{_ESCAPE}|[^\\\\])*?{_TRIPLE_DOUBLE}"
    f"|'(?:{_ESCAPE}|[^\\\\'\\n\\r])*'|\"(?:{_ESCAPE}|[^\\\\\"\\n\\r])*\")"
)
_EXPONENT = "(?:[eE][+-]?[0-9]+)"
_TOKEN = re.compile(
    "|".join(
        (
            r"(?P<skip>[ \t\n\r\f]+|//[^\n]*)",
            f"(?P<bytes>(?:[rR][bB]|[bB][rR]){_RAW_BODY}|[bB]{_BODY})",
            f"(?P<string>[rR]{_RAW_BODY}|{_BODY})",
            r"""(?P<unterminated>['"][\s\S]*)""",
            f"(?P<double>[0-9]+\\.[0-9]+{_EXPONENT}?|[0-9]+{_EXPONENT}|\\.[0-9]+{_EXPONENT}?)",
            "(?P<uint>(?:0[xX][0-9a-fA-F]+|[0-9]+)[uU])",
            "(?P<int>0[xX][0-9a-fA-F]+|[0-9]+)",
            "(?P<ident>[_a-zA-Z][_a-zA-Z0-9]*)",
            r"(?P<punctuation>==|!=|<=|>=|&&|\|\||[<>!+\-*/%?:.,()\[\]{}])",
            r"(?P<other>[\s\S])",
        )
    )
)
_KINDS = {
    "bytes": TokenKind.BYTES,
    "string": TokenKind.STRING,
    # An unterminated string runs to the end; the library reports it properly.
    "unterminated": TokenKind.OTHER,
    "double": TokenKind.DOUBLE,
    "uint": TokenKind.UINT,
    "int": TokenKind.INT,
    "ident": TokenKind.IDENT,
    "punctuation": TokenKind.PUNCTUATION,
    "other": TokenKind.OTHER,
}


def tokenize(source: str) -> list[Token]:
    """The tokens of ``source``, ending with an END token; positions are character offsets.

    Nothing raises: what CEL cannot read becomes an OTHER token, for the parser to refuse."""
    tokens = [
        Token(_KINDS[kind], match.group(), match.start(), match.end())
        for match in _TOKEN.finditer(source)
        if (kind := match.lastgroup) is not None and kind != "skip"
    ]
    tokens.append(Token(TokenKind.END, "", len(source), len(source)))
    return tokens


def first_opener_beyond(tokens: Sequence[Token], depth_max: int) -> int | None:
    """The position of the first (, [ or { that opens more than ``depth_max`` levels at once."""
    depth = 0
    for token in tokens:
        if token.kind is not TokenKind.PUNCTUATION:
            continue
        if token.text in _OPENERS:
            depth += 1
            if depth > depth_max:
                return token.start
        elif token.text in _CLOSERS:
            # Stray closers are the parser's to report; they must not buy extra depth.
            depth = max(depth - 1, 0)
    return None


def macro_calls(tokens: Sequence[Token]) -> list[Token]:
    """The macro names called as ``.name(``, the only form in which CEL expands them."""
    calls = []
    for before, token, after in zip(tokens, tokens[1:], tokens[2:], strict=False):
        if (
            token.kind is TokenKind.IDENT
            and token.text in MACROS
            and before.text == "."
            and after.text == "("
            and before.kind is TokenKind.PUNCTUATION
            and after.kind is TokenKind.PUNCTUATION
        ):
            calls.append(token)
    return calls


# --- the tree -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Literal:
    kind: str
    """int, uint, double, string, bytes, bool or null."""
    text: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Ident:
    name: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class FieldStep:
    name: str
    start: int
    """Where the field's name starts."""
    end: int


@dataclass(frozen=True, slots=True)
class IndexStep:
    index: Node
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class MethodStep:
    name: str
    args: tuple[Node, ...]
    start: int
    """Where the method's name starts."""
    end: int


Step = FieldStep | IndexStep | MethodStep


@dataclass(frozen=True, slots=True)
class Postfix:
    """``base`` followed by selections, indexes and method calls, left to right."""

    base: Node
    steps: tuple[Step, ...]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class GlobalCall:
    function: str
    args: tuple[Node, ...]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class ListLiteral:
    elements: tuple[Node, ...]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class MapLiteral:
    entries: tuple[tuple[Node, Node], ...]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Prefix:
    operators: tuple[str, ...]
    operand: Node
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Operation:
    """``operands[0] operators[0] operands[1] operators[1] ...`` at one precedence level."""

    operators: tuple[str, ...]
    operands: tuple[Node, ...]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Conditional:
    condition: Node
    if_true: Node
    if_false: Node
    start: int
    end: int


Node = (
    Literal
    | Ident
    | Postfix
    | GlobalCall
    | ListLiteral
    | MapLiteral
    | Prefix
    | Operation
    | Conditional
)


def parse(tokens: list[Token]) -> Node:
    """The tree of an expression the library has already compiled, from its tokens."""
    return _Parser(tokens).parse()


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self._tokens = tokens
        self._at = 0
        self._last = len(tokens) - 1  # the END token, which the parser never moves past

    def parse(self) -> Node:
        node = self._expression()
        if self._peek().kind is not TokenKind.END:
            raise self._unexpected()
        return node

    def _peek(self, ahead: int = 0) -> Token:
        return self._tokens[min(self._at + ahead, self._last)]

    def _next(self) -> Token:
        token = self._tokens[self._at]
        if self._at < self._last:
            self._at += 1
        return token

    def _is(self, text: str, ahead: int = 0) -> bool:
        token = self._tokens[min(self._at + ahead, self._last)]
        return token.text == text and token.kind is TokenKind.PUNCTUATION

    def _expect(self, text: str) -> Token:
        if not self._is(text):
            raise self._unexpected(f"expected {text!r}")
        return self._next()

    def _unexpected(self, why: str = "") -> ExpressionError:
        token = self._peek()
        found = token.text or str(token.kind)
        detail = f"{why}, found {found!r}" if why else f"unexpected {found!r}"
        return ExpressionError(detail, position=token.start)

    def _expression(self) -> Node:
        condition = self._chain(("||",), self._and)
        if not self._is("?"):
            return condition
        self._next()
        if_true = self._chain(("||",), self._and)
        self._expect(":")
        if_false = self._expression()
        return Conditional(condition, if_true, if_false, condition.start, if_false.end)

    def _and(self) -> Node:
        return self._chain(("&&",), self._relation)

    def _relation(self) -> Node:
        return self._chain(_RELATIONS, self._addition)

    def _addition(self) -> Node:
        return self._chain(("+", "-"), self._multiplication)

    def _multiplication(self) -> Node:
        return self._chain(("*", "/", "%"), self._unary)

    def _chain(
        self, operators: frozenset[str] | tuple[str, ...], operand: Callable[[], Node]
    ) -> Node:
        first = operand()
        found: list[str] = []
        operands = [first]
        while self._is_operator(operators):
            found.append(self._next().text)
            operands.append(operand())
        if not found:
            return first
        return Operation(tuple(found), tuple(operands), first.start, operands[-1].end)

    def _is_operator(self, operators: frozenset[str] | tuple[str, ...]) -> bool:
        token = self._peek()
        if token.text not in operators:
            return False
        return token.kind is TokenKind.PUNCTUATION or (
            token.kind is TokenKind.IDENT and token.text == "in"
        )

    def _unary(self) -> Node:
        start = self._peek().start
        operators: list[str] = []
        while self._is("!") or self._is("-"):
            operators.append(self._next().text)
        operand = self._member()
        if not operators:
            return operand
        return Prefix(tuple(operators), operand, start, operand.end)

    def _member(self) -> Node:
        base = self._primary()
        steps: list[Step] = []
        while True:
            if self._is("."):
                self._next()
                name = self._next()
                if name.kind is not TokenKind.IDENT:
                    raise ExpressionError("expected a field name after '.'", position=name.start)
                if self._is("("):
                    args, end = self._arguments()
                    steps.append(MethodStep(name.text, args, name.start, end))
                else:
                    steps.append(FieldStep(name.text, name.start, name.end))
            elif self._is("["):
                opener = self._next()
                index = self._expression()
                closer = self._expect("]")
                steps.append(IndexStep(index, opener.start, closer.end))
            elif self._is("{"):
                raise ExpressionError(
                    "creating messages (Type{field: value}) is not supported",
                    position=self._peek().start,
                )
            else:
                break
        if not steps:
            return base
        return Postfix(base, tuple(steps), base.start, steps[-1].end)

    def _arguments(self) -> tuple[tuple[Node, ...], int]:
        self._expect("(")
        args: list[Node] = []
        while not self._is(")"):
            args.append(self._expression())
            if not self._is(")"):
                self._expect(",")
        return tuple(args), self._next().end

    def _primary(self) -> Node:
        token = self._peek()
        if token.kind is TokenKind.IDENT or (
            self._is(".") and self._peek(1).kind is TokenKind.IDENT
        ):
            return self._name()
        if self._is("("):
            self._next()
            inner = self._expression()
            self._expect(")")
            return inner
        if self._is("["):
            return self._list()
        if self._is("{"):
            return self._map()
        literal_kinds = {
            TokenKind.INT: "int",
            TokenKind.UINT: "uint",
            TokenKind.DOUBLE: "double",
            TokenKind.STRING: "string",
            TokenKind.BYTES: "bytes",
        }
        if token.kind in literal_kinds:
            self._next()
            return Literal(literal_kinds[token.kind], token.text, token.start, token.end)
        raise self._unexpected()

    def _name(self) -> Node:
        start = self._peek().start
        leading_dot = "." if self._is(".") else ""
        if leading_dot:
            self._next()
        token = self._next()
        if not leading_dot and token.text in ("true", "false"):
            return Literal("bool", token.text, token.start, token.end)
        if not leading_dot and token.text == "null":
            return Literal("null", token.text, token.start, token.end)
        if token.text == "in":
            raise ExpressionError("unexpected 'in'", position=token.start)
        name = leading_dot + token.text
        if self._is("("):
            args, end = self._arguments()
            return GlobalCall(name, args, start, end)
        return Ident(name, start, token.end)

    def _list(self) -> Node:
        opener = self._expect("[")
        self._skip_lone_comma("]")
        elements: list[Node] = []
        while not self._is("]"):
            elements.append(self._expression())
            if not self._is("]"):
                self._expect(",")
        return ListLiteral(tuple(elements), opener.start, self._next().end)

    def _skip_lone_comma(self, closer: str) -> None:
        # The library reads `[,]` and `{,}` as empty.
        if self._is(",") and self._is(closer, 1):
            self._next()

    def _map(self) -> Node:
        opener = self._expect("{")
        self._skip_lone_comma("}")
        entries: list[tuple[Node, Node]] = []
        while not self._is("}"):
            key = self._expression()
            self._expect(":")
            entries.append((key, self._expression()))
            if not self._is("}"):
                self._expect(",")
        return MapLiteral(tuple(entries), opener.start, self._next().end)
