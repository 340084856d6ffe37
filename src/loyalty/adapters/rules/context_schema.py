"""The fields a merchant expression may read, checked before it runs and bound when it does.

One schema serves both ends, so an expression that passes the check never selects a field the
bound context lacks:

* ``check_references`` walks a parsed expression and refuses unknown names and fields (with a
  did-you-mean), macros nested inside macros, and values whose evaluation cost grows with the
  square or cube of a basket's size (see ``_MacroBody``);
* ``bind_variables`` turns the caller's dicts into the values the library converts, filling
  what is absent so that ``purchase.channel == 'web'`` is simply false when there is no channel.

What an absent value binds as (the documented contract for expression authors):

* a string field that is missing or null: ``""`` (so comparisons never fail);
* ``discount_minor``: ``0``; ``marketing_consent``: ``false``; ``items``: ``[]``;
  ``attributes``: ``{}``;
* a whole absent ``purchase``, ``member`` or ``event`` (an action has no purchase): every field
  at its empty value, ints ``0`` and timestamps ``1970-01-01T00:00:00Z``.

Keys of the free-form ``attributes`` maps are not known in advance; reading one a member lacks
is a runtime error, so authors guard with ``has(member.attributes.tier)`` or
``'tier' in member.attributes``.

Timestamps are bound in UTC, so ``now.getHours()`` is the hour in UTC. The library has no
time-zone argument for these functions (``now.getHours('Europe/Paris')`` is an unknown
function), so a local-time condition must be written with the offset by hand.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Literal as TypingLiteral

from loyalty.adapters.rules.cel_syntax import (
    MACROS,
    Conditional,
    FieldStep,
    GlobalCall,
    Ident,
    IndexStep,
    ListLiteral,
    Literal,
    MapLiteral,
    MethodStep,
    Node,
    Operation,
    Postfix,
    Prefix,
)
from loyalty.adapters.rules.errors import BindingError, ExpressionError
from loyalty.adapters.rules.limits import LIST_LENGTH_MAX, VALUE_DEPTH_MAX

Kind = TypingLiteral["condition", "formula"]

# --- the schema ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scalar:
    name: str


@dataclass(frozen=True, slots=True)
class FieldSpec:
    type: FieldType
    required: bool = False
    """A required field must be present (and not null) whenever its record is given."""


@dataclass(frozen=True, slots=True, eq=False)
class Record:
    name: str
    fields: Mapping[str, FieldSpec]


@dataclass(frozen=True, slots=True)
class ListOf:
    element: FieldType


@dataclass(frozen=True, slots=True)
class FreeMap:
    """A map with any keys and JSON-like values: the ``attributes`` of members and events."""


@dataclass(frozen=True, slots=True)
class Dynamic:
    """A value whose type is not known before evaluation."""


FieldType = Scalar | Record | ListOf | FreeMap | Dynamic

STRING = Scalar("string")
INT = Scalar("int")
UINT = Scalar("uint")
DOUBLE = Scalar("double")
BOOL = Scalar("bool")
BYTES = Scalar("bytes")
NULL = Scalar("null")
TIMESTAMP = Scalar("timestamp")
DURATION = Scalar("duration")
TYPE = Scalar("type")
NUMBER = Scalar("number")
"""Some number (int, uint or double) not known before evaluation."""
FREE_MAP = FreeMap()
DYNAMIC = Dynamic()

ITEM = Record(
    "item",
    {
        "line_id": FieldSpec(STRING, required=True),
        "sku": FieldSpec(STRING),
        "name": FieldSpec(STRING),
        "category": FieldSpec(STRING),
        "brand": FieldSpec(STRING),
        "quantity": FieldSpec(INT, required=True),
        "unit_price_minor": FieldSpec(INT, required=True),
        "discount_minor": FieldSpec(INT),
        "base_minor": FieldSpec(INT, required=True),
    },
)
PURCHASE = Record(
    "purchase",
    {
        "total_minor": FieldSpec(INT, required=True),
        "currency": FieldSpec(STRING, required=True),
        "channel": FieldSpec(STRING),
        "store": FieldSpec(STRING),
        "occurred_at": FieldSpec(TIMESTAMP, required=True),
        "items": FieldSpec(ListOf(ITEM)),
    },
)
MEMBER = Record(
    "member",
    {
        "id": FieldSpec(STRING, required=True),
        "external_id": FieldSpec(STRING),
        "email": FieldSpec(STRING),
        "locale": FieldSpec(STRING),
        "gender": FieldSpec(STRING),
        "birth_date": FieldSpec(STRING),
        "marketing_consent": FieldSpec(BOOL),
        "enrolled_at": FieldSpec(TIMESTAMP, required=True),
        "attributes": FieldSpec(FREE_MAP),
        "tier": FieldSpec(STRING),
        "plans": FieldSpec(ListOf(STRING)),
        "tiers": FieldSpec(ListOf(STRING)),
    },
)
EVENT = Record(
    "event",
    {
        "type": FieldSpec(STRING, required=True),
        "action": FieldSpec(STRING),
        "attributes": FieldSpec(FREE_MAP),
    },
)
ROOT: Mapping[str, FieldType] = {
    "purchase": PURCHASE,
    "member": MEMBER,
    "event": EVENT,
    "now": TIMESTAMP,
}

TYPE_NAMES = frozenset(
    {"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"}
)
"""Identifiers the library resolves to types, as in ``type(x) == int``."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INT_MIN, INT_MAX = -(2**63), 2**63 - 1

# --- checking references ------------------------------------------------------------------

Origin = TypingLiteral["root", "element", "fresh"]
"""Where a value comes from: a context variable (``purchase.items``), the element a macro is
walking (``i.brand``), or computed by the expression itself."""


@dataclass(frozen=True, slots=True)
class _Typed:
    type: FieldType
    origin: Origin


@dataclass(frozen=True, slots=True)
class _MacroBody:
    """We are inside the predicate or transform of a macro, which runs once per element.

    The library copies a value each time a variable is read and copies the partial result on
    every step of ``map``/``filter``. Inside a body that makes some innocent-looking
    expressions quadratic or cubic in the basket's size (measured at 500 lines:
    ``purchase.items.exists(i, purchase.items.size() > 1)`` 0.3 s, and
    ``purchase.items.map(i, purchase.items).filter(l, true)`` minutes), so a body may not
    read lists or whole records from the context, nor contain another macro."""

    macro: str
    position: int


@dataclass(frozen=True)
class References:
    """What a checked expression reads, for the dry run's sample values."""

    attribute_paths: frozenset[tuple[str, ...]] = field(default_factory=frozenset)
    """``("member", "tier")`` for ``member.attributes.tier``; literal keys only."""
    roots: frozenset[str] = field(default_factory=frozenset)
    """The context variables read (``member``, ``now``...)."""


_NUMERIC = frozenset({"int", "uint", "double"})
_ARITHMETIC = frozenset({"+", "-", "*", "/", "%"})
_RESULT_OF_FUNCTION: Mapping[str, Scalar] = {
    "size": INT,
    "int": INT,
    "uint": UINT,
    "double": DOUBLE,
    "string": STRING,
    "bytes": BYTES,
    "timestamp": TIMESTAMP,
    "duration": DURATION,
    "type": TYPE,
    "matches": BOOL,
    "contains": BOOL,
    "startsWith": BOOL,
    "endsWith": BOOL,
    "getFullYear": INT,
    "getMonth": INT,
    "getDayOfYear": INT,
    "getDayOfMonth": INT,
    "getDate": INT,
    "getDayOfWeek": INT,
    "getHours": INT,
    "getMinutes": INT,
    "getSeconds": INT,
    "getMilliseconds": INT,
}


def check_references(tree: Node, source: str, *, kind: Kind) -> References:
    """Refuse names and fields the context does not have, and bodies that would be too costly;
    refuse a result of the wrong type when it is certain before evaluation."""
    checker = _Checker(source)
    result = checker.check(tree, {}, None)
    # NUMBER may well be an int, but it is never a bool.
    allowed = (BOOL,) if kind == "condition" else (INT, NUMBER)
    if isinstance(result.type, Scalar) and result.type not in allowed:
        raise ExpressionError(
            f"a {kind} must produce {'a bool' if kind == 'condition' else 'an int'}, "
            f"but this expression produces {_article(result.type.name)}",
            position=tree.start,
        )
    return References(frozenset(checker.attribute_paths), frozenset(checker.roots))


class _Checker:
    def __init__(self, source: str) -> None:
        self._source = source
        self.attribute_paths: set[tuple[str, ...]] = set()
        self.roots: set[str] = set()

    def check(self, node: Node, scope: Mapping[str, FieldType], body: _MacroBody | None) -> _Typed:
        match node:
            case Literal(kind=kind):
                return _Typed(Scalar(kind), "fresh")
            case Ident():
                return self._value(node, self._ident(node, scope), body)
            case Postfix():
                return self._value(node, self._postfix(node, scope, body), body)
            case GlobalCall():
                return self._global_call(node, scope, body)
            case ListLiteral(elements=elements):
                for element in elements:
                    self.check(element, scope, body)
                return _Typed(ListOf(DYNAMIC), "fresh")
            case MapLiteral(entries=entries):
                for key, value in entries:
                    self.check(key, scope, body)
                    self.check(value, scope, body)
                return _Typed(FREE_MAP, "fresh")
            case Prefix(operators=operators, operand=operand):
                inner = self.check(operand, scope, body)
                if operators[0] == "!":  # the outermost operator decides
                    return _Typed(BOOL, "fresh")
                return _Typed(inner.type if isinstance(inner.type, Scalar) else DYNAMIC, "fresh")
            case Operation():
                return self._operation(node, scope, body)
            case Conditional(condition=condition, if_true=if_true, if_false=if_false):
                self.check(condition, scope, body)
                first = self.check(if_true, scope, body)
                second = self.check(if_false, scope, body)
                # The branch taken is not known, so either branch's value may come out.
                origins = {first.origin, second.origin}
                origin: Origin = "root" if "root" in origins else "fresh"
                if origins == {"element"}:
                    origin = "element"
                joined = first.type if first.type == second.type else DYNAMIC
                return _Typed(joined, origin)

    def _value(self, node: Node, typed: _Typed, body: _MacroBody | None) -> _Typed:
        if body is not None and typed.origin == "root" and isinstance(typed.type, ListOf | Record):
            raise self._costly_in_body(self._text(node), node.start, body)
        return typed

    def _costly_in_body(self, text: str, position: int, body: _MacroBody) -> ExpressionError:
        return ExpressionError(
            f"'{text}' would be copied once per element inside {body.macro}(), which is too "
            "costly for a list or a whole record; read only the element's own fields and "
            "single values (like purchase.total_minor) inside a macro",
            position=position,
        )

    def _ident(self, node: Ident, scope: Mapping[str, FieldType]) -> _Typed:
        if node.name in scope:
            return _Typed(scope[node.name], "element")
        if node.name in ROOT:
            self.roots.add(node.name)
            return _Typed(ROOT[node.name], "root")
        if node.name in TYPE_NAMES:
            return _Typed(TYPE, "fresh")
        known = [*scope, *ROOT]
        best = _closest(node.name.lstrip("."), known)
        message = f"unknown name '{node.name}'"
        if best is not None:
            message += f" (did you mean '{best}'?)"
        else:
            message += f"; the context has {', '.join(sorted(ROOT))}"
        raise ExpressionError(message, position=node.start, suggestion=best)

    def _postfix(
        self, node: Postfix, scope: Mapping[str, FieldType], body: _MacroBody | None
    ) -> _Typed:
        if isinstance(node.base, Ident):
            current = self._ident(node.base, scope)
        else:
            current = self.check(node.base, scope, body)
        # The literal keys read so far below an attributes map, for the dry run's samples.
        attribute_path: list[str] | None = None
        for step in node.steps:
            if isinstance(step, MethodStep):
                attribute_path = None
                current = self._method(node, step, current, scope, body)
                continue
            key = step.name if isinstance(step, FieldStep) else None
            if isinstance(step, IndexStep):
                self.check(step.index, scope, body)
                if isinstance(step.index, Literal) and step.index.kind == "string":
                    key = _string_value(step.index.text)
            was_free_map = isinstance(current.type, FreeMap)
            current = self._select(node, step, key, current)
            if body is not None and current.origin == "root" and isinstance(current.type, ListOf):
                raise self._costly_in_body(self._source[node.start : step.end], step.start, body)
            if attribute_path is not None:
                attribute_path = [*attribute_path, key] if key is not None else None
            elif was_free_map and current.origin == "root" and key is not None:
                attribute_path = [self._root_name(node), key]
            if attribute_path is not None and len(attribute_path) > 1:
                self.attribute_paths.add(tuple(attribute_path))
        return current

    def _root_name(self, node: Postfix) -> str:
        return node.base.name if isinstance(node.base, Ident) else ""

    def _select(
        self, node: Postfix, step: FieldStep | IndexStep, key: str | None, current: _Typed
    ) -> _Typed:
        kind = current.type
        if isinstance(kind, Record):
            if key is None:
                return _Typed(DYNAMIC, current.origin)
            spec = kind.fields.get(key)
            if spec is None:
                raise self._unknown_field(node, step, key, kind)
            return _Typed(spec.type, current.origin)
        if isinstance(kind, ListOf):
            if isinstance(step, FieldStep):
                raise ExpressionError(
                    f"'{self._text_until(node, step.start - 1)}' is a list and has no field "
                    f"'{step.name}'; test its elements with exists() or all()",
                    position=step.start,
                )
            return _Typed(kind.element, current.origin)
        if isinstance(kind, Scalar):
            raise ExpressionError(
                f"'{self._text_until(node, step.start)}' is {_article(kind.name)} and has no "
                + (f"field '{step.name}'" if isinstance(step, FieldStep) else "elements"),
                position=step.start,
            )
        return _Typed(DYNAMIC, current.origin)

    def _unknown_field(
        self, node: Postfix, step: FieldStep | IndexStep, key: str, record: Record
    ) -> ExpressionError:
        if isinstance(step, FieldStep):
            prefix = self._source[node.start : step.start]
            written = prefix + step.name
            position = step.start
        else:
            prefix = self._source[node.start : step.start] + "."
            written = self._source[node.start : step.end]
            position = step.index.start
        best = _closest(key, list(record.fields))
        if best is not None:
            suggestion = prefix + best
            return ExpressionError(
                f"unknown field '{written}' (did you mean '{suggestion}'?)",
                position=position,
                suggestion=suggestion,
            )
        return ExpressionError(
            f"unknown field '{written}'; {record.name} fields are {', '.join(record.fields)}",
            position=position,
        )

    def _method(
        self,
        node: Postfix,
        step: MethodStep,
        target: _Typed,
        scope: Mapping[str, FieldType],
        body: _MacroBody | None,
    ) -> _Typed:
        if step.name in MACROS and step.args and isinstance(step.args[0], Ident):
            return self._macro(node, step, target, scope, body)
        for arg in step.args:
            self.check(arg, scope, body)
        result = _RESULT_OF_FUNCTION.get(step.name)
        return _Typed(result, "fresh") if result is not None else _Typed(DYNAMIC, "fresh")

    def _macro(
        self,
        node: Postfix,
        step: MethodStep,
        target: _Typed,
        scope: Mapping[str, FieldType],
        body: _MacroBody | None,
    ) -> _Typed:
        if body is not None:
            raise ExpressionError(
                f"{step.name}() inside the body of {body.macro}() would run once per element "
                "per element; macros cannot be nested (for a list of values, use `in`)",
                position=step.start,
            )
        variable = step.args[0]
        assert isinstance(variable, Ident)
        if isinstance(target.type, ListOf):
            element: FieldType = target.type.element
        elif isinstance(target.type, Scalar):
            raise ExpressionError(
                f"{step.name}() needs a list, but '{self._text_until(node, step.start - 1)}' "
                f"is {_article(target.type.name)}",
                position=step.start,
            )
        elif isinstance(target.type, Record | FreeMap):
            element = STRING  # a macro over a map walks its keys
        else:
            element = DYNAMIC
        inner_scope = {**scope, variable.name: element}
        inner_body = _MacroBody(step.name, step.start)
        results = [self.check(arg, inner_scope, inner_body) for arg in step.args[1:]]
        if step.name == "map":
            self._check_transform(step, results[-1])
            element_out = results[-1].type
            return _Typed(ListOf(element_out), "fresh")
        if step.name == "filter":
            return _Typed(ListOf(element), "fresh")
        return _Typed(BOOL, "fresh")

    def _check_transform(self, step: MethodStep, result: _Typed) -> None:
        """``map`` copies everything it has produced so far on every step, so each element it
        produces must be small: a scalar, or a part of the element being walked."""
        if isinstance(result.type, Scalar) or result.origin == "element":
            return
        transform = step.args[-1]
        raise ExpressionError(
            f"map() must produce a number, string, bool or timestamp for each element (or the "
            f"element itself), but '{self._text(transform)}' may be a list or a map; convert "
            "an attribute with int(), double() or string()",
            position=transform.start,
        )

    def _global_call(
        self, node: GlobalCall, scope: Mapping[str, FieldType], body: _MacroBody | None
    ) -> _Typed:
        if node.function == "has":
            # has() tests a field without reading it, so it never copies the value.
            for arg in node.args:
                if isinstance(arg, Postfix):
                    self._postfix(arg, scope, body)
                else:
                    self.check(arg, scope, body)
            return _Typed(BOOL, "fresh")
        typed_args = [self.check(arg, scope, body) for arg in node.args]
        if node.function == "dyn" and len(typed_args) == 1:
            return typed_args[0]
        result = _RESULT_OF_FUNCTION.get(node.function)
        return _Typed(result, "fresh") if result is not None else _Typed(DYNAMIC, "fresh")

    def _operation(
        self, node: Operation, scope: Mapping[str, FieldType], body: _MacroBody | None
    ) -> _Typed:
        operands = [self.check(operand, scope, body) for operand in node.operands]
        if node.operators[0] not in _ARITHMETIC:
            return _Typed(BOOL, "fresh")  # ||, &&, comparisons and `in`
        current = operands[0].type
        for operator, operand, typed in zip(
            node.operators, node.operands[1:], operands[1:], strict=True
        ):
            current = self._arithmetic(operator, current, typed.type, operand)
        return _Typed(current, "fresh")

    def _arithmetic(
        self, operator: str, left: FieldType, right: FieldType, right_node: Node
    ) -> FieldType:
        if not (isinstance(left, Scalar) and isinstance(right, Scalar)):
            # `+` joins lists and strings; the other operators only ever produce scalars.
            return DYNAMIC if operator == "+" else NUMBER
        if left.name in _NUMERIC and right.name in _NUMERIC and left != right:
            raise ExpressionError(
                f"CEL does not mix {left.name} and {right.name} in arithmetic; convert one side "
                f"with {left.name}(...) or {right.name}(...)",
                position=right_node.start,
            )
        if left == right and left.name in (*_NUMERIC, "string", "bytes"):
            return left
        if {left.name, right.name} <= {"timestamp", "duration"}:
            return DURATION if left == right else TIMESTAMP
        return NUMBER

    def _text(self, node: Node) -> str:
        return self._source[node.start : node.end]

    def _text_until(self, node: Postfix, end: int) -> str:
        return self._source[node.start : end].rstrip(". ")


def _string_value(text: str) -> str | None:
    """The value of a plain string literal, or None when escapes or prefixes make it harder to
    read than it is worth (the field is then simply not checked)."""
    for quote in ('"""', "'''", '"', "'"):
        if text.startswith(quote) and text.endswith(quote) and len(text) >= 2 * len(quote):
            inner = text[len(quote) : -len(quote)]
            return None if "\\" in inner else inner
    return None


def _closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``name`` was most likely meant to be. Each candidate is also compared by
    its first word, so 'totl' finds 'total_minor'."""
    best, best_score = None, 0.0
    for candidate in candidates:
        score = max(
            difflib.SequenceMatcher(None, name, candidate).ratio(),
            difflib.SequenceMatcher(None, name, candidate.split("_")[0]).ratio(),
        )
        if score > best_score:
            best, best_score = candidate, score
    return best if best_score >= 0.6 else None


def _article(type_name: str) -> str:
    if type_name == "number":
        return "a number"
    return f"an {type_name}" if type_name[0] in "aeiou" else f"a {type_name}"


# --- binding ------------------------------------------------------------------------------


def bind_variables(
    *,
    purchase: Mapping[str, object] | None,
    member: Mapping[str, object] | None,
    event: Mapping[str, object] | None,
    now: datetime,
) -> dict[str, object]:
    """The context's variables as the library's plain values, checked against the schema."""
    return {
        "purchase": _bind_record(PURCHASE, purchase, "purchase"),
        "member": _bind_record(MEMBER, member, "member"),
        "event": _bind_record(EVENT, event, "event"),
        "now": _bind_timestamp(now, "now"),
    }


def _bind_record(record: Record, value: object, path: str) -> dict[str, object]:
    if value is None:
        return {name: _empty(spec.type) for name, spec in record.fields.items()}
    if not isinstance(value, Mapping):
        raise BindingError(f"{path} must be a mapping, not {type(value).__name__}")
    unknown = value.keys() - record.fields.keys()
    if unknown:
        # A misspelt key would otherwise bind its field as empty without a word.
        raise BindingError(f"{path} has no field(s) {', '.join(sorted(map(str, unknown)))}")
    bound: dict[str, object] = {}
    for name, spec in record.fields.items():
        item = value.get(name)
        if item is None and spec.required:
            raise BindingError(f"{path}.{name} is required")
        bound[name] = _bind(spec.type, item, f"{path}.{name}")
    return bound


def _bind(kind: FieldType, value: object, path: str) -> object:
    if value is None:
        return _empty(kind)
    if kind == STRING:
        if isinstance(value, str):
            return value
        if isinstance(value, date) and not isinstance(value, datetime):
            return value.isoformat()  # birth_date
        raise BindingError(f"{path} must be a string, not {type(value).__name__}")
    if kind == INT:
        return _bind_int(value, path)
    if kind == BOOL:
        if not isinstance(value, bool):
            raise BindingError(f"{path} must be a bool, not {type(value).__name__}")
        return value
    if kind == TIMESTAMP:
        return _bind_timestamp(value, path)
    if isinstance(kind, ListOf):
        if not isinstance(value, Sequence) or isinstance(value, str | bytes):
            raise BindingError(f"{path} must be a list, not {type(value).__name__}")
        _check_length(value, path)
        element = kind.element
        if isinstance(element, Record):
            return [_bind_record(element, entry, f"{path}[{i}]") for i, entry in enumerate(value)]
        return [_bind(element, entry, f"{path}[{i}]") for i, entry in enumerate(value)]
    if isinstance(kind, Record):
        return _bind_record(kind, value, path)
    if isinstance(value, Mapping):
        _check_free_value(value, path, depth=1)
        return value
    raise BindingError(f"{path} must be a mapping, not {type(value).__name__}")


def _bind_int(value: object, path: str) -> int:
    # bool is an int in Python but a different type in CEL.
    if not isinstance(value, int) or isinstance(value, bool):
        raise BindingError(f"{path} must be an int, not {type(value).__name__}")
    if not INT_MIN <= value <= INT_MAX:
        # The library would silently turn it into a uint or a double.
        raise BindingError(f"{path} is outside the 64-bit range CEL ints have")
    return value


def _bind_timestamp(value: object, path: str) -> datetime:
    if not isinstance(value, datetime):
        raise BindingError(f"{path} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        # The library would read a naive datetime as UTC, whatever it meant.
        raise BindingError(f"{path} must carry a time zone")
    # The library cannot convert zoneinfo zones, and it reads getHours() and friends in the
    # value's own offset; UTC makes both behave.
    return value.astimezone(UTC)


def _check_length(value: Sequence[object], path: str) -> None:
    if len(value) > LIST_LENGTH_MAX:
        raise BindingError(
            f"{path} has {len(value)} elements; expressions accept at most {LIST_LENGTH_MAX}"
        )


def _check_free_value(value: object, path: str, *, depth: int) -> None:
    """A free-form value must be JSON-like, not nested too deep and without long lists."""
    if value is None or isinstance(value, bool | str | float):
        return
    if isinstance(value, int):
        _bind_int(value, path)
        return
    if depth > VALUE_DEPTH_MAX:
        raise BindingError(f"{path} nests lists and maps deeper than {VALUE_DEPTH_MAX} levels")
    if isinstance(value, list):
        _check_length(value, path)
        for i, entry in enumerate(value):
            _check_free_value(entry, f"{path}[{i}]", depth=depth + 1)
        return
    if isinstance(value, dict):
        for key, entry in value.items():
            if not isinstance(key, str):
                raise BindingError(f"{path} has a key that is not a string: {key!r}")
            _check_free_value(entry, f"{path}.{key}", depth=depth + 1)
        return
    raise BindingError(f"{path} holds a {type(value).__name__}, which is not JSON-like")


def _empty(kind: FieldType) -> object:
    if kind == STRING:
        return ""
    if kind == INT:
        return 0
    if kind == BOOL:
        return False
    if kind == TIMESTAMP:
        return EPOCH
    if isinstance(kind, ListOf):
        return []
    if isinstance(kind, Record):
        return _bind_record(kind, None, kind.name)
    return {}
