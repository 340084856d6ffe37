"""Merchant expressions (CEL) for rules: compile and check, bind once per event, evaluate.

Only ``loyalty.domain`` may be imported from here; the application calls these functions."""

from loyalty.adapters.rules.cel_expressions import (
    EXPRESSION_LENGTH_MAX,
    LIST_LENGTH_MAX,
    MACRO_CALLS_MAX,
    NESTING_DEPTH_MAX,
    VALUE_DEPTH_MAX,
    BindingError,
    BoundContext,
    CompiledExpression,
    ExpressionError,
    Kind,
    bind_context,
    compile_expression,
    dry_run,
    evaluate_condition,
    evaluate_formula,
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
]
