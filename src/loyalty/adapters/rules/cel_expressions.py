"""Merchant expressions in CEL: compiled once, checked against the context's schema, bound once
per event and evaluated per rule.

The library (``common-expression-language`` 0.10, a Rust extension) is fast but trusts its
input: 40 KB of source or a value nested 10,000 deep crashes the process, some evaluations
take minutes, and it raises a zoo of exception types. So, in this order, ``compile_expression``
refuses what is too big before the library sees it, lets the library parse inside a
``BaseException`` guard, then checks every field reference itself; ``bind_context`` refuses
oversized values; and ``dry_run`` evaluates a new expression in a child process that may crash
or hang without taking the server with it.

Costs measured on the development machine: compile ~130 us (~30 us of it the library's);
bind ~50 us with no lines, ~100 us with 3, ~12 ms with 500 (three quarters of it the library's
conversion); evaluate under 1 us for a comparison of fields. A macro over 500 lines costs
~0.6 ms just to read ``purchase.items``, ~1 ms for ``exists``/``all`` and 10 ms to 0.36 s for
``map``/``filter`` (the latter when every line passes), because the library copies its
partial result on every step.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import cel

from loyalty.adapters.rules.cel_syntax import first_opener_beyond, macro_calls, parse, tokenize
from loyalty.adapters.rules.context_schema import Kind, References, bind_variables, check_references
from loyalty.adapters.rules.errors import BindingError, ExpressionError
from loyalty.adapters.rules.limits import (
    EXPRESSION_LENGTH_MAX,
    LIST_LENGTH_MAX,
    MACRO_CALLS_MAX,
    NESTING_DEPTH_MAX,
    VALUE_DEPTH_MAX,
)

__all__ = [
    "EXPRESSION_LENGTH_MAX",
    "LIST_LENGTH_MAX",
    "MACRO_CALLS_MAX",
    "NESTING_DEPTH_MAX",
    "VALUE_DEPTH_MAX",
    "BindingError",
    "BoundContext",
    "CompiledExpression",
    "ExpressionError",
    "Kind",
    "bind_context",
    "compile_expression",
    "dry_run",
    "evaluate_condition",
    "evaluate_formula",
    "run_isolated",
]

_DRY_RUN_MODULE = "loyalty.adapters.rules.dry_run"
_PARSE_ERROR = re.compile(r"ERROR: <input>:(\d+):(\d+): ([^\n]*)")
_RECURSION_LIMIT = re.compile(r"Recursion limit of (\d+) exceeded")


@dataclass(frozen=True)
class CompiledExpression:
    source: str
    kind: Kind
    _program: cel.Program = field(repr=False, compare=False)
    references: References = field(default_factory=References, repr=False, compare=False)


@dataclass(frozen=True)
class BoundContext:
    """The variables of one event, converted for the library once and shared by every rule."""

    _context: cel.Context = field(repr=False)


def compile_expression(source: str, *, kind: Kind) -> CompiledExpression:
    """Compile a merchant expression, or raise ExpressionError saying what to change."""
    if kind not in ("condition", "formula"):
        raise ValueError(f"kind must be 'condition' or 'formula', not {kind!r}")
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > EXPRESSION_LENGTH_MAX:
        raise ExpressionError(
            f"the expression is {size} bytes long; the maximum is {EXPRESSION_LENGTH_MAX}"
        )
    if not source.strip():
        raise ExpressionError("the expression is empty", position=0)
    tokens = tokenize(source)
    too_deep = first_opener_beyond(tokens, NESTING_DEPTH_MAX)
    if too_deep is not None:
        raise ExpressionError(
            f"the expression nests parentheses, brackets and braces more than "
            f"{NESTING_DEPTH_MAX} levels deep",
            position=too_deep,
        )
    calls = macro_calls(tokens)
    if len(calls) > MACRO_CALLS_MAX:
        raise ExpressionError(
            f"the expression calls all/exists/exists_one/map/filter {len(calls)} times; "
            f"the maximum is {MACRO_CALLS_MAX}",
            position=calls[MACRO_CALLS_MAX].start,
        )
    program = _library_compile(source)
    try:
        tree = parse(tokens)
        references = check_references(tree, source, kind=kind)
    except RecursionError:
        # Long chains are kept flat, so only extreme nesting of ternaries can get here.
        raise ExpressionError("the expression is too deeply nested to check") from None
    return CompiledExpression(source, kind, program, references)


def _library_compile(source: str) -> cel.Program:
    try:
        return cel.compile(source)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # the Rust extension can raise a PanicException
        raise _compile_error(source, exc) from None


def _compile_error(source: str, exc: BaseException) -> ExpressionError:
    text = str(exc)
    match = _PARSE_ERROR.search(text)
    if match is None:
        first_line = text.split("\n", 1)[0]
        return ExpressionError(f"the expression does not compile: {first_line}")
    line, column = int(match[1]), int(match[2])
    detail = match[3].removeprefix("Syntax error: ")
    limit = _RECURSION_LIMIT.search(detail)
    if limit is not None:
        detail = f"the expression nests more than {limit[1]} levels deep (counting ? :)"
    return ExpressionError(
        f"syntax error at line {line}, column {column}: {detail}",
        position=_offset(source, line, column),
    )


def _offset(source: str, line: int, column: int) -> int:
    """The library counts lines from 1 and columns in characters from 1."""
    lines = source.split("\n")
    before = sum(len(text) + 1 for text in lines[: max(line - 1, 0)])
    return min(before + max(column - 1, 0), len(source))


def bind_context(
    *,
    purchase: Mapping[str, Any] | None,
    member: Mapping[str, Any] | None,
    event: Mapping[str, Any] | None,
    now: datetime,
) -> BoundContext:
    """The event's variables, converted once: binding costs far more than evaluating (~100 us
    against ~1 us for a three-line purchase), so bind once per event and evaluate every rule
    against the result.

    Raises BindingError when a value is not of the schema's type or breaks a limit (a list over
    LIST_LENGTH_MAX elements, attributes nested over VALUE_DEPTH_MAX). Absent values bind as
    empty ones, ``""`` for strings; ``context_schema`` lists them all."""
    variables = bind_variables(purchase=purchase, member=member, event=event, now=now)
    try:
        return BoundContext(cel.Context(variables))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise BindingError(f"the library could not convert the context: {exc}") from None


def evaluate_condition(expr: CompiledExpression, ctx: BoundContext) -> bool:
    result = _execute(expr, ctx)
    if not isinstance(result, bool):
        raise ExpressionError(
            f"the condition produced {_describe(result)}, not true or false; compare it, "
            "e.g. `... == 'gold'` or `... > 0`"
        )
    return result


def evaluate_formula(expr: CompiledExpression, ctx: BoundContext) -> int:
    """Points are integers. A double result is refused rather than rounded here, because the
    rounding is the merchant's choice: ``int(...)`` truncates toward zero."""
    result = _execute(expr, ctx)
    if isinstance(result, bool) or not isinstance(result, int):
        hint = "; wrap the formula in int(...) to truncate it" if isinstance(result, float) else ""
        raise ExpressionError(f"the formula produced {_describe(result)}, not an int{hint}")
    return result


def _execute(expr: CompiledExpression, ctx: BoundContext) -> object:
    try:
        result: object = expr._program.execute(ctx._context)
    except (KeyboardInterrupt, SystemExit):
        raise
    except KeyError as exc:
        key = exc.args[0] if exc.args else "?"
        raise ExpressionError(
            f"evaluation failed: no key {key!r} in the map; test first for a key that may be "
            f"absent, e.g. {key!r} in member.attributes && ..."
        ) from None
    except BaseException as exc:
        first_line = str(exc).split("\n", 1)[0] or type(exc).__name__
        raise ExpressionError(f"evaluation failed: {first_line}") from None
    return result


def _describe(value: object) -> str:
    kinds = {bool: "a bool", int: "an int", float: "a double", str: "a string"}
    kind = kinds.get(type(value), f"a value of type {type(value).__name__}")
    shown = repr(value)
    return f"{kind} ({shown[:40]}{'...' if len(shown) > 40 else ''})"


def dry_run(source: str, *, kind: Kind, timeout_s: float = 2.0) -> None:
    """Compile ``source`` and evaluate it against sample contexts (a three-line purchase, then
    one of LIST_LENGTH_MAX lines) in a child process, so that a crash or a hang in the library
    costs a refusal rather than the server. Raises ExpressionError with the child's message,
    or when the child crashes or does not finish within ``timeout_s`` (start-up included,
    ~0.3 s, mostly importing the library)."""
    reply = run_isolated(
        [sys.executable, "-m", _DRY_RUN_MODULE],
        {"source": source, "kind": kind},
        timeout_s=timeout_s,
    )
    if not reply.get("ok"):
        raise ExpressionError(
            str(reply.get("message", "the dry run failed")),
            position=_optional_int(reply.get("position")),
            suggestion=_optional_str(reply.get("suggestion")),
        )


def run_isolated(
    argv: Sequence[str], request: Mapping[str, object], *, timeout_s: float
) -> dict[str, object]:
    """Run ``argv`` with ``request`` as JSON on its stdin and return the JSON object it prints.

    Any other outcome is an ExpressionError whose message holds no path or traceback: the
    child was killed by a signal, exited without an answer, or ran past ``timeout_s`` (it is
    then killed)."""
    try:
        completed = subprocess.run(  # noqa: S603 - argv is ours, the request goes via stdin
            list(argv),
            input=json.dumps(dict(request)),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ExpressionError(
            f"the expression did not finish within {timeout_s:g} s when tried against a "
            f"purchase of {LIST_LENGTH_MAX} lines; filter() and map() over purchase.items cost "
            "time in proportion to the square of its length, so use fewer of them"
        ) from None
    if completed.returncode < 0:
        raise ExpressionError(
            f"the expression engine crashed ({_signal_name(-completed.returncode)}) while "
            "trying the expression; it cannot be used"
        )
    try:
        reply = json.loads(completed.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        reply = None
    if not isinstance(reply, dict):
        raise ExpressionError(
            f"the expression could not be tried: the checker exited with status "
            f"{completed.returncode} without an answer"
        )
    return reply


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None
