"""Shared execution: one GraphQL execution and one serialized payload per event
for every subscriber with the same operation, variables and tenant (Hasura's
cohorts).

Strawberry executes a subscription's selection set once per event for each
subscriber. For the common case (a valid subscription document whose only
root field is `events` or `orderEvents`) the transport asks the `Planner`
instead: it parses and validates each distinct document once, and each
`Cohort` renders an entry to its `{"data": ...}` JSON once, whoever asks
first, and evaluates its payload filter (`where`, compiled once per plan) once per
entry, whoever asks first. Every member still reads through its own consumer group
and acknowledges after its own write; only the rendering and the filtering are shared.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    execute,
    get_operation_ast,
    parse,
    validate,
)
from graphql.execution.values import get_argument_values, get_variable_values
from graphql.validation import ASTValidationRule

from ..schema.errors import GatewayError, masked
from ..streaming import keys
from ..streaming.entries import Entry, Record
from ..streaming.hub import Accept
from ..streaming.subscriber import Sift
from .context import GatewayContext
from .events import DeliveryStream, open_entries, to_event, to_order_event
from .filters import order_filter, type_filter
from .metrics import DeliveryMetrics
from .projection import Projector, compile_projection
from .where import FilterError, Predicate, compile_filter

_ROOTS: dict[str, tuple[str, Callable[[Entry], Any]]] = {
    "events": (keys.EVENTS_KIND, to_event),
    "orderEvents": (keys.ORDERS_KIND, to_order_event),
}
RENDER_CACHE_SIZE = 2048
DOCUMENT_CACHE_SIZE = 256
PLAN_CACHE_SIZE = 1024
PlanKey = tuple[str, str | None, bytes]  # (query, operation name, variables as sorted JSON)


@dataclass(frozen=True)
class SharedPlan:
    """A subscription the transport may run through a cohort."""

    key: PlanKey
    document: DocumentNode
    operation_name: str | None
    variables: dict[str, Any]              # as sent; execute() coerces them
    field_name: str
    arguments: dict[str, Any]
    project: Projector | None = None       # set when the selection needs no execution
    matches: Predicate | None = None       # the compiled `where`, if any


@dataclass
class Cohort:
    """The subscribers of one tenant sharing a plan: their rendered events, and their
    filter's decisions (per entry, and per batch for the fan-out writer)."""

    plan: SharedPlan
    schema: GraphQLSchema
    metrics: DeliveryMetrics | None = None
    members: int = 0
    renders: int = 0
    _cache: OrderedDict[str, str] = field(default_factory=OrderedDict)
    _decisions: OrderedDict[str, bool] = field(default_factory=OrderedDict)
    accept: Accept = field(default=lambda entry: True)  # what its members deliver (set by `open_shared`)
    _sifted_batch: Sequence[Record] | None = None
    _sifted: Sequence[int] = ()
    # The bound methods every member keeps, made once for the cohort (64 bytes a member each).
    renderer: Callable[[Entry], str] = field(init=False)
    sifter: Sift = field(init=False)

    def __post_init__(self) -> None:
        self.renderer = self.render
        self.sifter = self.sift

    def sift(self, records: Sequence[Record]) -> Sequence[int]:
        """The positions in a batch of the entries the cohort's members accept: decided once
        per batch (the reader offers every member the same batch object)."""
        if records is not self._sifted_batch:
            accept = self.accept
            self._sifted = [i for i, r in enumerate(records) if isinstance(r, Entry) and accept(r)]
            self._sifted_batch = records
        return self._sifted

    def matches(self, entry: Entry) -> bool:
        """Whether `entry`'s payload passes the plan's `where` (the plan has one): evaluated
        once per entry, whichever member asks first."""
        decided = self._decisions.get(entry.id)
        if decided is None:
            assert self.plan.matches is not None
            decided = self._decisions[entry.id] = self.plan.matches(entry.payload)
            if self.metrics is not None:
                self.metrics.filter_evaluations += 1
            if len(self._decisions) > RENDER_CACHE_SIZE:
                self._decisions.popitem(last=False)
        return decided

    def render(self, entry: Entry) -> str:
        """The `payload` of the `next` message for `entry`, as JSON text."""
        cached = self._cache.get(entry.id)
        if cached is not None:
            return cached
        if self.plan.project is not None:
            return self._remember(entry.id, orjson.dumps(self.plan.project(entry)).decode())
        convert = _ROOTS[self.plan.field_name][1]
        result = execute(
            self.schema,
            self.plan.document,
            root_value=convert(entry),
            variable_values=self.plan.variables,
            operation_name=self.plan.operation_name,
        )
        payload: dict[str, Any] = {"data": result.data}  # type: ignore[union-attr]
        if result.errors:  # type: ignore[union-attr]
            payload["errors"] = [masked(error).formatted for error in result.errors]  # type: ignore[union-attr]
        return self._remember(entry.id, orjson.dumps(payload).decode())

    def _remember(self, entry_id: str, text: str) -> str:
        self.renders += 1
        self._cache[entry_id] = text
        if len(self._cache) > RENDER_CACHE_SIZE:
            self._cache.popitem(last=False)
        return text


class Planner:
    """Decides which subscriptions can share execution, and keeps the cohorts."""

    def __init__(
        self,
        schema: GraphQLSchema,
        rules: Collection[type[ASTValidationRule]] | None = None,
        max_tokens: int | None = None,
    ) -> None:
        """`rules` and `max_tokens` must be what Strawberry validates and parses with,
        so that this path refuses exactly the documents Strawberry's path refuses."""
        self.schema = schema
        self._rules = rules
        self._max_tokens = max_tokens
        self._documents: OrderedDict[str, DocumentNode | None] = OrderedDict()
        self._plans: OrderedDict[PlanKey, SharedPlan | None] = OrderedDict()
        self._cohorts: dict[tuple[str, PlanKey], Cohort] = {}
        self.leaver = self.leave  # kept by every subscription: one bound method for all

    def plan(self, query: object, variables: object, operation_name: object) -> SharedPlan | None:
        """A plan, or None: the caller then takes Strawberry's path, which reports any error."""
        if not isinstance(query, str) or not isinstance(operation_name, str | None):
            return None
        if variables is None:
            variables = {}
        if not isinstance(variables, dict):
            return None
        try:
            key = (query, operation_name, orjson.dumps(variables, option=orjson.OPT_SORT_KEYS))
        except TypeError:  # e.g. an integer beyond 64 bits: Strawberry's path says what is wrong
            return None
        # One plan per distinct subscription, shared by its subscribers: a plan and its
        # compiled projection are not small, and many sockets send the same one.
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        plan = self._plan(key, variables)
        self._plans[key] = plan
        if len(self._plans) > PLAN_CACHE_SIZE:
            self._plans.popitem(last=False)
        return plan

    def _plan(self, key: PlanKey, variables: dict[str, Any]) -> SharedPlan | None:
        query, operation_name, _ = key
        document = self._document(query)
        if document is None:
            return None
        operation = get_operation_ast(document, operation_name)
        if operation is None or operation.operation != OperationType.SUBSCRIPTION:
            return None
        return self._plan_operation(key, document, operation, variables)

    def join(self, tenant_id: str, plan: SharedPlan, metrics: DeliveryMetrics | None = None) -> Cohort:
        cohort = self._cohorts.get((tenant_id, plan.key))
        if cohort is None:
            cohort = self._cohorts[(tenant_id, plan.key)] = Cohort(plan, self.schema, metrics)
        cohort.members += 1
        return cohort

    def leave(self, tenant_id: str, cohort: Cohort) -> None:
        cohort.members -= 1
        if cohort.members == 0 and self._cohorts.get((tenant_id, cohort.plan.key)) is cohort:
            del self._cohorts[(tenant_id, cohort.plan.key)]

    def cohorts(self) -> list[Cohort]:
        return list(self._cohorts.values())

    def _document(self, query: str) -> DocumentNode | None:
        if query in self._documents:
            self._documents.move_to_end(query)
            return self._documents[query]
        try:
            document: DocumentNode | None = parse(query, max_tokens=self._max_tokens)
        except GraphQLError:
            document = None
        if document is not None and validate(self.schema, document, self._rules):
            document = None
        self._documents[query] = document
        if len(self._documents) > DOCUMENT_CACHE_SIZE:
            self._documents.popitem(last=False)
        return document

    def _plan_operation(
        self, key: PlanKey, document: DocumentNode, operation: OperationDefinitionNode, variables: dict[str, Any]
    ) -> SharedPlan | None:
        selections = operation.selection_set.selections
        if len(selections) != 1 or not isinstance(selections[0], FieldNode) or selections[0].directives:
            return None
        node = selections[0]
        if node.name.value not in _ROOTS:
            return None
        coerced = get_variable_values(self.schema, operation.variable_definitions or (), variables)
        if isinstance(coerced, list):  # variable errors: let Strawberry report them
            return None
        subscription_type = self.schema.subscription_type
        assert subscription_type is not None
        try:
            arguments = get_argument_values(subscription_type.fields[node.name.value], node, coerced)
            matches = compile_filter(arguments.get("where"))
        except (GraphQLError, FilterError):  # Strawberry's path says what is wrong
            return None
        return SharedPlan(
            key, document, key[1], variables, node.name.value, arguments, compile_projection(node), matches
        )


async def open_shared(context: GatewayContext, planner: Planner, plan: SharedPlan) -> DeliveryStream[str]:
    """Rendered payloads for one subscriber, each acknowledged after it is written.

    Raises a coded GatewayError (sent as an `error` message) before the stream starts;
    closing the stream releases the group and the cohort, even if never iterated."""
    kind, _ = _ROOTS[plan.field_name]
    after, durable = plan.arguments.get("after"), plan.arguments.get("durable")
    assert context.principal is not None
    tenant_id = context.principal.tenant_id
    select = _accept(plan)  # the argument errors first, before the group is made
    cohort = planner.join(tenant_id, plan, context.delivery)
    if plan.matches is not None:
        select = _and(select, cohort.matches)
    cohort.accept = select
    try:
        entries = await open_entries(context, kind, select, after, durable)
    except BaseException:
        planner.leave(tenant_id, cohort)
        raise
    entries.on_close(planner.leaver, tenant_id, cohort)
    shared = entries.map(cohort.renderer)
    shared.sift = cohort.sifter
    return shared


def _and(select: Accept, matches: Accept) -> Accept:
    return lambda entry: select(entry) and matches(entry)


def _accept(plan: SharedPlan) -> Accept:
    if plan.field_name == "events":
        return type_filter(plan.arguments.get("types"))
    return order_filter(plan.arguments.get("orderId"))


__all__ = ["Cohort", "GatewayError", "Planner", "SharedPlan", "open_shared"]
