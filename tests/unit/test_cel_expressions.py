"""The merchant-expression adapter against the real CEL library: what evaluates to what, every
guardrail, the schema check, binding, and the dry run's child process."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from loyalty.adapters.rules import (
    EXPRESSION_LENGTH_MAX,
    LIST_LENGTH_MAX,
    MACRO_CALLS_MAX,
    NESTING_DEPTH_MAX,
    VALUE_DEPTH_MAX,
    BindingError,
    BoundContext,
    ExpressionError,
    bind_context,
    compile_expression,
    dry_run,
    evaluate_condition,
    evaluate_formula,
)
from loyalty.adapters.rules.cel_expressions import run_isolated

NOW = datetime(2024, 6, 14, 18, 30, tzinfo=UTC)


def line(line_id, sku, category, brand, quantity, unit_price_minor, discount_minor=0):
    return {
        "line_id": line_id,
        "sku": sku,
        "name": None,
        "category": category,
        "brand": brand,
        "quantity": quantity,
        "unit_price_minor": unit_price_minor,
        "discount_minor": discount_minor,
        "base_minor": quantity * unit_price_minor - discount_minor,
    }


LINES = [
    line("1", "W1", "wine", "Private", 2, 1000),
    line("2", "W2", "wine", "Bodega", 1, 500),
    line("3", "C1", "cheese", "Private", 1, 1099, discount_minor=100),
]


def purchase(**overrides):
    return {
        "total_minor": 3499,
        "currency": "EUR",
        "channel": None,
        "store": "store-1",
        "occurred_at": NOW - timedelta(hours=1),
        "items": LINES,
    } | overrides


def member(**overrides):
    return {
        "id": "mem_1",
        "external_id": "c-1",
        "email": None,
        "locale": "en",
        "gender": None,
        "birth_date": None,
        "marketing_consent": True,
        "enrolled_at": NOW - timedelta(days=10),
        "attributes": {"vip": True, "tier": "gold", "rate": 1.5, "tags": ["a", "b"]},
    } | overrides


def context(**overrides) -> BoundContext:
    values = {
        "purchase": purchase(),
        "member": member(),
        "event": {"type": "purchase", "action": None, "attributes": {"campaign": "summer"}},
        "now": NOW,
    } | overrides
    return bind_context(**values)


def condition(source, ctx=None):
    return evaluate_condition(compile_expression(source, kind="condition"), ctx or context())


def formula(source, ctx=None):
    return evaluate_formula(compile_expression(source, kind="formula"), ctx or context())


def refusal(source, kind="condition") -> ExpressionError:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(source, kind=kind)
    return caught.value


# --- what evaluates to what ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("purchase.items.exists(i, i.brand == 'Private') && member.attributes.vip == true", True),
        ("purchase.items.exists(i, i.brand == 'Nobody') && member.attributes.vip == true", False),
        ("purchase.total_minor >= 2000", True),
        ("purchase.total_minor >= 3500", False),
        ("purchase.occurred_at < now", True),
        ("now - purchase.occurred_at < duration('2h')", True),
        ("now - purchase.occurred_at < duration('30m')", False),
        ("member.enrolled_at + duration('240h') == now", True),
        ("purchase.occurred_at > timestamp('2024-06-14T17:00:00Z')", True),
        ("purchase.items.all(i, i.base_minor > 0)", True),
        ("purchase.items.exists_one(i, i.category == 'cheese')", True),
        ("purchase.items[2].base_minor == 999", True),
        ("purchase.items.map(i, i.sku).exists(s, s == 'W2')", True),
        ("purchase['store'] == 'store-1'", True),
        ("'gold' == member.attributes['tier'] && 'b' in member.attributes.tags", True),
        ("has(member.attributes.vip) && !has(member.attributes.birthday)", True),
        ("event.type == 'purchase' && event.attributes.campaign == 'summer'", True),
        ("member.marketing_consent && member.email == ''", True),
    ],
)
def test_a_condition_evaluates_to_what_cel_says(source, expected):
    assert condition(source) is expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("purchase.total_minor / 100 * 2", 68),  # 3499 / 100 is 34: integer division
        ("purchase.items.filter(i, i.category == 'wine').size()", 2),
        ("purchase.items.exists(i, i.brand == 'Private') ? 50 : 0", 50),
        ("int(double(purchase.total_minor) * member.attributes.rate)", 5248),
        ("purchase.items[0].quantity * 10 - 1", 19),
    ],
)
def test_a_formula_evaluates_to_an_int(source, expected):
    result = formula(source)
    assert result == expected
    assert type(result) is int


def test_a_missing_string_binds_as_empty_so_comparing_it_is_false_not_an_error():
    assert condition("purchase.channel == 'web'") is False
    assert condition("purchase.channel == '' && member.gender == '' && member.birth_date == ''")


def test_an_absent_purchase_binds_as_empty_values_for_an_action_event():
    ctx = context(purchase=None, event={"type": "action", "action": "review", "attributes": None})
    assert condition(
        "purchase.total_minor == 0 && purchase.items.size() == 0 && purchase.currency == '' "
        "&& purchase.occurred_at == timestamp('1970-01-01T00:00:00Z') && event.action == 'review'",
        ctx,
    )


def test_a_time_in_another_zone_is_bound_in_utc():
    paris = datetime(2024, 6, 14, 20, 30, tzinfo=ZoneInfo("Europe/Paris"))
    assert formula("now.getHours()", context(now=paris)) == 18


def test_one_compiled_expression_serves_many_contexts():
    expr = compile_expression("purchase.total_minor >= 2000", kind="condition")
    small = context(purchase=purchase(total_minor=1999))
    assert [evaluate_condition(expr, ctx) for ctx in (context(), small)] == [True, False]


# --- guardrails ---------------------------------------------------------------------------


def test_a_41_kb_source_is_refused_before_the_library_sees_it():
    # This very source crashes the library's parser (see the isolation test below).
    source = "purchase" + ".b" * 20_500
    error = refusal(source)
    assert error.message == (
        f"the expression is {len(source)} bytes long; the maximum is {EXPRESSION_LENGTH_MAX}"
    )


def test_the_length_limit_counts_utf8_bytes():
    padding = EXPRESSION_LENGTH_MAX - len("purchase.currency == ''")
    at_limit = "purchase.currency == '" + "x" * padding + "'"
    assert len(at_limit.encode()) == EXPRESSION_LENGTH_MAX
    compile_expression(at_limit, kind="condition")
    over = at_limit.replace("x", "é", 1)  # one more byte, same number of characters
    assert "2049 bytes" in refusal(over).message


def test_nesting_deeper_than_the_limit_is_refused_with_its_position():
    ok = "(" * NESTING_DEPTH_MAX + "1" + ")" * NESTING_DEPTH_MAX + " == 1"
    assert condition(ok)
    error = refusal("[" + ok.replace("== 1", "] == [1]"))
    assert error.message == (
        f"the expression nests parentheses, brackets and braces more than "
        f"{NESTING_DEPTH_MAX} levels deep"
    )
    assert error.position == NESTING_DEPTH_MAX


def test_brackets_inside_strings_are_not_nesting():
    assert condition("purchase.currency != '" + "((((" * 20 + "'")


def test_more_macro_calls_than_the_limit_are_refused_at_the_first_one_over():
    calls = [f"purchase.items.exists(i, i.sku == 'S{n}')" for n in range(MACRO_CALLS_MAX + 1)]
    assert condition(" || ".join(calls[:MACRO_CALLS_MAX])) is False
    source = " || ".join(calls)
    error = refusal(source)
    assert error.message == (
        f"the expression calls all/exists/exists_one/map/filter {MACRO_CALLS_MAX + 1} times; "
        f"the maximum is {MACRO_CALLS_MAX}"
    )
    assert error.position == source.rindex("exists")


def test_macro_names_inside_strings_are_not_counted():
    text = ".exists(" * (MACRO_CALLS_MAX + 1)
    assert condition(f"purchase.currency != '{text}'")


def test_a_syntax_error_names_its_line_and_column_and_gives_the_offset():
    error = refusal("purchase.total_minor >= ")
    assert error.message.startswith("syntax error at line 1, column 25: mismatched input '<EOF>'")
    assert error.position == 24

    error = refusal("purchase.total_minor > 1 &&\n  'é' +* 2")
    assert error.message.startswith("syntax error at line 2, column 8: extraneous input '*'")
    assert error.position == len("purchase.total_minor > 1 &&\n  'é' +")


def test_a_ternary_chain_past_the_parsers_own_limit_is_an_error_not_a_crash():
    error = refusal("true ? 1 : " * 100 + "0", kind="formula")
    assert "nests more than 96 levels deep" in error.message


def test_a_macro_inside_a_macro_is_refused():
    source = "purchase.items.exists(i, ['a', 'b'].exists(b, i.brand == b))"
    error = refusal(source)
    assert error.message.startswith("exists() inside the body of exists() would run once per")
    assert error.position == source.rindex("exists")


@pytest.mark.parametrize(
    "source",
    [
        "purchase.items.exists(i, purchase.items.size() > 2)",
        "purchase.items.all(i, purchase.items[0].sku != i.sku || i.line_id == '1')",
    ],
)
def test_a_macro_body_may_not_copy_the_items_list_once_per_element(source):
    # Measured at 500 lines: 0.3 s per evaluation for the first.
    error = refusal(source)
    assert error.message.startswith("'purchase.items' would be copied once per element inside")


def test_a_map_must_produce_small_values():
    # `.map(i, purchase.items).filter(...)` took 1.3 s at 100 lines and grows with the cube.
    assert (
        "map() must produce a number"
        in refusal("purchase.items.map(i, [i.sku, i.brand]).size() > 0").message
    )
    assert (
        "convert an attribute"
        in refusal("purchase.items.map(i, member.attributes.tags).size() > 0").message
    )
    assert formula("purchase.items.map(i, i).size() + purchase.items.map(i, i.sku).size()") == 6


def test_message_construction_is_refused():
    assert refusal("Foo{a: 1} == 1").message == (
        "creating messages (Type{field: value}) is not supported"
    )


# --- the schema check ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message", "suggestion", "position"),
    [
        (
            "purchase.totl > 1",
            "unknown field 'purchase.totl' (did you mean 'purchase.total_minor'?)",
            "purchase.total_minor",
            9,
        ),
        (
            "purchse.total_minor > 1",
            "unknown name 'purchse' (did you mean 'purchase'?)",
            "purchase",
            0,
        ),
        (
            "purchase.items.exists(i, i.brnd == 'X')",
            "unknown field 'i.brnd' (did you mean 'i.brand'?)",
            "i.brand",
            27,
        ),
        (
            "purchase.items[0].categroy == 'wine'",
            "unknown field 'purchase.items[0].categroy' "
            "(did you mean 'purchase.items[0].category'?)",
            "purchase.items[0].category",
            18,
        ),
        (
            "purchase['chanel'] == 'web'",
            "unknown field 'purchase['chanel']' (did you mean 'purchase.channel'?)",
            "purchase.channel",
            9,
        ),
        (
            "has(member.emial)",
            "unknown field 'member.emial' (did you mean 'member.email'?)",
            "member.email",
            11,
        ),
        (
            "member.marketing == true",
            "unknown field 'member.marketing' (did you mean 'member.marketing_consent'?)",
            "member.marketing_consent",
            7,
        ),
        (
            "purchase.amount > 1",
            "unknown field 'purchase.amount'; purchase fields are total_minor, currency, "
            "channel, store, occurred_at, items",
            None,
            9,
        ),
    ],
)
def test_an_unknown_name_or_field_is_refused_with_a_suggestion(
    source, message, suggestion, position
):
    error = refusal(source)
    assert (error.message, error.suggestion, error.position) == (message, suggestion, position)


def test_text_in_strings_is_not_taken_for_fields():
    assert condition("purchase.currency != 'purchase.nothing + member.nope'")


def test_a_macro_variable_shadows_a_context_name():
    assert condition("purchase.items.exists(member, member.brand == 'Bodega')")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("purchase.total_minor.cents > 1", "'purchase.total_minor' is an int and has no field"),
        ("purchase.items.brand == 'x'", "'purchase.items' is a list and has no field 'brand'"),
        ("purchase.total_minor.exists(x, x > 1)", "exists() needs a list, but"),
    ],
)
def test_selecting_from_a_scalar_or_a_list_is_refused(source, message):
    assert refusal(source).message.startswith(message)


def test_attribute_maps_accept_any_key():
    ctx = context(
        member=member(attributes={"any_key": 1, "with-dash": "y", "nested": {"deep": [1, 2]}}),
        event={"type": "action", "attributes": {"whatever": {"you": "like"}}},
    )
    assert condition(
        "member.attributes.any_key == 1 && member.attributes['with-dash'] == 'y' "
        "&& member.attributes.nested.deep.exists(n, n == 2) "
        "&& event.attributes.whatever.you == 'like'",
        ctx,
    )


@pytest.mark.parametrize(
    ("source", "kind", "message"),
    [
        ("purchase.total_minor", "condition", "a condition must produce a bool, but this "),
        ("purchase.total_minor > 1", "formula", "a formula must produce an int, but this "),
        ("double(purchase.total_minor) / 3.0", "formula", "a formula must produce an int, "),
        ("purchase.total_minor * 1.5", "formula", "CEL does not mix int and double"),
    ],
)
def test_a_result_of_the_wrong_type_is_refused_when_it_is_certain(source, kind, message):
    assert refusal(source, kind=kind).message.startswith(message)


# --- evaluation errors --------------------------------------------------------------------


def test_a_formula_that_produces_a_double_at_runtime_is_an_error_naming_int():
    with pytest.raises(ExpressionError) as caught:
        formula("member.attributes.rate * 3.0")
    assert caught.value.message == (
        "the formula produced a double (4.5), not an int; wrap the formula in int(...) to "
        "truncate it"
    )


def test_a_formula_that_produces_a_string_is_an_error():
    with pytest.raises(ExpressionError) as caught:
        formula("member.attributes.tier")
    assert caught.value.message == "the formula produced a string ('gold'), not an int"


def test_a_condition_that_produces_a_non_bool_is_an_error():
    with pytest.raises(ExpressionError) as caught:
        condition("member.attributes.tier")
    assert caught.value.message.startswith(
        "the condition produced a string ('gold'), not true or false"
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("purchase.total_minor / (purchase.items.size() - 3) > 1", "division by zero"),
        ("member.attributes.points > 1", "no key 'points' in the map"),
        ("purchase.currency > 1", "No such overload"),
        ("purchase.items[3].sku == 'x'", "index out of bounds: 3"),
        ("9223372036854775807 + purchase.total_minor > 1", "Arithmetic overflow"),
    ],
)
def test_a_runtime_failure_is_an_expression_error(source, message):
    with pytest.raises(ExpressionError) as caught:
        condition(source)
    assert caught.value.message.startswith("evaluation failed: ")
    assert message in caught.value.message


# --- binding ------------------------------------------------------------------------------


def test_bind_context_accepts_the_maximum_number_of_items_and_refuses_one_more():
    items = [line(str(n), f"S{n}", "wine", "B", 1, 100) for n in range(LIST_LENGTH_MAX + 1)]
    ctx = context(purchase=purchase(items=items[:LIST_LENGTH_MAX]))
    assert formula("purchase.items.size()", ctx) == LIST_LENGTH_MAX
    with pytest.raises(BindingError) as caught:
        context(purchase=purchase(items=items))
    assert str(caught.value) == (
        f"purchase.items has {LIST_LENGTH_MAX + 1} elements; "
        f"expressions accept at most {LIST_LENGTH_MAX}"
    )


def test_bind_context_refuses_long_lists_and_deep_nesting_inside_attributes():
    with pytest.raises(BindingError, match=r"member.attributes.skus has 501 elements"):
        context(member=member(attributes={"skus": list(range(LIST_LENGTH_MAX + 1))}))
    # The attributes map is the first level; about 10,000 levels crash the library.
    deep: list[object] = []
    for _ in range(VALUE_DEPTH_MAX - 2):
        deep = [deep]
    assert (
        formula("size(member.attributes.deep)", context(member=member(attributes={"deep": deep})))
        == 1
    )
    with pytest.raises(BindingError, match=f"deeper than {VALUE_DEPTH_MAX} levels"):
        context(member=member(attributes={"deep": [deep]}))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"now": datetime(2024, 6, 14, 18, 30)}, "now must carry a time zone"),
        ({"purchase": purchase(total_minor=2**63)}, "outside the 64-bit range"),
        ({"purchase": purchase(total_minor=True)}, "total_minor must be an int, not bool"),
        ({"purchase": purchase(totl=1)}, "purchase has no field(s) totl"),
        ({"purchase": purchase(currency=None)}, "purchase.currency is required"),
        ({"member": member(attributes={"when": NOW})}, "holds a datetime, which is not JSON"),
    ],
)
def test_bind_context_refuses_values_off_the_schema(overrides, message):
    with pytest.raises(BindingError) as caught:
        context(**overrides)
    assert message in str(caught.value)


# --- the dry run --------------------------------------------------------------------------

CHILD_TIMEOUT_S = 1.0


def test_dry_run_passes_a_good_expression_within_the_short_time_limit():
    dry_run(
        "purchase.items.exists(i, i.brand == 'Private') && member.attributes.vip == true",
        kind="condition",
        timeout_s=CHILD_TIMEOUT_S,
    )


def test_dry_run_passes_a_formula_reading_attributes_of_any_type():
    dry_run("int(member.attributes.rate) * purchase.items.size()", kind="formula")
    dry_run("member.attributes.tags.exists(t, t == 'x')", kind="condition")


def test_dry_run_reports_a_refusal_with_position_and_suggestion():
    with pytest.raises(ExpressionError) as caught:
        dry_run("purchase.totl > 1", kind="condition")
    assert (caught.value.message, caught.value.position, caught.value.suggestion) == (
        "unknown field 'purchase.totl' (did you mean 'purchase.total_minor'?)",
        9,
        "purchase.total_minor",
    )


def test_dry_run_catches_an_expression_that_compiles_but_fails_on_sample_data():
    with pytest.raises(ExpressionError) as caught:
        dry_run("purchase.currency > 1", kind="condition")
    assert caught.value.message.startswith("evaluation failed: No such overload")


def test_dry_run_refuses_an_expression_too_slow_for_a_full_basket():
    # Each filter that keeps all 500 lines costs ~0.3 s here: the library copies its partial
    # result on every step. All eight pass the static checks; only the clock catches them.
    source = "purchase.items" + ".filter(i, true)" * MACRO_CALLS_MAX + ".size() > 0"
    compile_expression(source, kind="condition")
    with pytest.raises(ExpressionError) as caught:
        dry_run(source, kind="condition", timeout_s=CHILD_TIMEOUT_S)
    assert caught.value.message.startswith(
        f"the expression did not finish within {CHILD_TIMEOUT_S:g} s"
    )


def test_a_crash_of_the_library_in_the_child_is_an_expression_error_not_our_crash():
    # The 41 KB source the length limit refuses, given to the library directly: it segfaults.
    crash = (
        "import resource, cel\n"
        "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
        "cel.compile('purchase' + '.b' * 20_500)\n"
        "print('{\"ok\": true}')\n"
    )
    with pytest.raises(ExpressionError) as caught:
        run_isolated([sys.executable, "-c", crash], {}, timeout_s=10)
    assert caught.value.message == (
        "the expression engine crashed (SIGSEGV) while trying the expression; it cannot be used"
    )
