"""What one GraphQL document may cost, decided before anything runs (no I/O).

Depth is strawberry's ``QueryDepthLimiter``, aliases its ``MaxAliasesLimiter`` and document size
its ``MaxTokensLimiter``. Cost is ours: what a document makes the service layer read. Each root
field costs 1, except the two that read many rows: ``leaderboard`` costs its ``limit`` and
``around`` 2 x ``range`` + 1. An argument given as a variable counts as the largest value it may
take (validation runs before variables are seen), an absent one as its default, an out-of-range
one as the bound it breaks (the resolver refuses it with REST's ``bad_query``). Fields below the
root cost nothing more: the rows are read once, and names and avatars in one batch per request.

The error codes of the refusals are ``query_too_deep`` and ``query_too_costly``
(:func:`limit_code` names the library's own messages, which carry no code).
"""

from __future__ import annotations

from typing import Any

from graphql import (
    FieldNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
)

from ingest.api.leaderboards import LIMIT_DEFAULT, LIMIT_MAX, RANGE_DEFAULT, RANGE_MAX

TOO_DEEP = "query_too_deep"
TOO_COSTLY = "query_too_costly"


def int_argument(field: FieldNode, name: str, default: int, largest: int) -> int:
    for argument in field.arguments or ():
        if argument.name.value == name:
            if isinstance(argument.value, IntValueNode):
                # Out of range: the resolver refuses it with REST's code (bad_query), so it costs
                # no more than the largest value it could have been.
                return min(max(1, int(argument.value.value)), largest)
            return largest  # a variable (or a wrong type, which validation refuses anyway)
    return default


def field_cost(field: FieldNode) -> int:
    name = field.name.value
    if name == "leaderboard":
        return int_argument(field, "limit", LIMIT_DEFAULT, LIMIT_MAX)
    if name == "around":
        return 2 * int_argument(field, "range", RANGE_DEFAULT, RANGE_MAX) + 1
    return 1


def selection_cost(
    selections: SelectionSetNode, context: ValidationContext, seen: frozenset[str] = frozenset()
) -> int:
    """The cost of the root fields in ``selections``, fragments expanded (each at most once on a
    path, so a fragment cycle, which validation refuses too, cannot loop)."""
    cost = 0
    for selection in selections.selections:
        if isinstance(selection, FieldNode):
            cost += field_cost(selection)
        elif isinstance(selection, InlineFragmentNode):
            cost += selection_cost(selection.selection_set, context, seen)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = context.get_fragment(name)
            if fragment is not None and name not in seen:
                cost += selection_cost(fragment.selection_set, context, seen | {name})
    return cost


def cost_limit(max_cost: int) -> type[ValidationRule]:
    """A validation rule refusing every operation that costs more than ``max_cost``."""

    class CostLimit(ValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            cost = selection_cost(node.selection_set, self.context)
            if cost > max_cost:
                self.report_error(
                    GraphQLError(
                        f"the operation costs {cost}, more than the {max_cost} allowed "
                        "(leaderboard costs its limit, around 2 x range + 1, any other field 1)",
                        node,
                        extensions={"code": TOO_COSTLY},
                    )
                )

    return CostLimit


def limit_code(message: str) -> str | None:
    """The code of a refusal by one of strawberry's limiters, known by its message (they set no
    code); None for any other message. Checked against strawberry-graphql 0.341 by the tests."""
    if "exceeds maximum operation depth" in message:
        return TOO_DEEP
    if "aliases found. Allowed:" in message or (
        "Document contains more than" in message and "tokens" in message
    ):
        return TOO_COSTLY
    return None
