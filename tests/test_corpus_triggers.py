"""Every trigger node of the corpus becomes a working trigger or a precise problem.

Trigger nodes are found straight in each file's JSON (not through the parser, so a node the
parser dropped still counts), then placed in exactly one category by the platform's own code:

* a schedule: validation finds nothing on the node, `control.schedules.schedule_trigger`
  picks this node, and Dagster takes its cron and timezone (`make_workflow_schedule` builds the
  `ScheduleDefinition`, `next_fire_time` iterates it);
* a schedule problem: validation errors on the node, each naming the field as the builder
  spelled it (`invalid_schedule`, `invalid_timezone`, ...): such a definition is not stored;
* a webhook (`control.hooks.Trigger.webhook` of the compiled version) whose provider's own
  signature is verified (`VERIFIED_HOOK_PROVIDERS` and `hook_providers.provider_of` agree) and
  whose `event`, if any, a delivery built as that provider sends it can name (the hook's own
  `unwanted_event` lets it through), with no provider (the generic scheme), or with a provider
  that is not verified and validation's `unverified_hook_provider` warning on its provider
  field (saying, when it has an `event`, that only `X-FlowMaestro-Event` filters it);
* a webhook of a verified provider whose `event` that provider never delivers (Discord's
  `message`): validation's `undeliverable_trigger_event` warning on its `event` field, and no
  delivery built as the provider sends it gets through the filter;
* manual: nothing to do, and nothing said;
* a type the platform cannot start (`triggerType: "email"`): validation's
  `unknown_trigger_type` warning on its type field (the workflow starts only through the API);
* a definition rejected for another error: its trigger is never deployed.

Anything else is `UNCLASSIFIED`, a trigger the platform would silently ignore; the tests fail on
it with the whole table. Pure code: no database, no Dagster instance.
"""

import functools
import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pytest

from flowmaestro_dagster.compile.validation import validate
from flowmaestro_dagster.control.hook_providers import provider_of
from flowmaestro_dagster.control.hooks import Trigger, triggers_of, unwanted_event
from flowmaestro_dagster.control.schedules import (
    WorkflowSchedule,
    next_fire_time,
    schedule_trigger,
)
from flowmaestro_dagster.orchestration.schedules import make_workflow_schedule
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.spec.configs import SCHEDULE_TRIGGER_TYPES, TriggerConfig
from flowmaestro_dagster.spec.parse import parse_workflow
from flowmaestro_dagster.spec.problems import Problem
from flowmaestro_dagster.spec.providers import DISCORD_INTERACTIONS, VERIFIED_HOOK_PROVIDERS
from flowmaestro_dagster.store.models import WorkflowVersion
from tests.builders import chain, node
from tests.conftest import CORPUS, corpus_files, corpus_id

FILES = corpus_files()
NOW = datetime(2026, 1, 1, tzinfo=UTC)

SCHEDULE = "schedule"
SCHEDULE_PROBLEM = "schedule problem"
WEBHOOK_VERIFIED = "webhook (provider signature)"
WEBHOOK_GENERIC = "webhook (generic signature)"
WEBHOOK_UNVERIFIED = "webhook (unverified provider, warned)"
WEBHOOK_UNDELIVERABLE = "webhook (event never delivered, warned)"
MANUAL = "manual"
UNSUPPORTED = "unsupported type (warned)"
REJECTED = "definition rejected"
UNCLASSIFIED = "UNCLASSIFIED"
WEBHOOKS = (WEBHOOK_VERIFIED, WEBHOOK_GENERIC, WEBHOOK_UNVERIFIED, WEBHOOK_UNDELIVERABLE)

# What the corpus holds today: fewer means a trigger node, or a kind of them, got lost.
MIN_TRIGGERS = 73
MIN_SCHEDULES = 19
MIN_WEBHOOKS = 53


@dataclass(frozen=True)
class Placed:
    """One trigger node and the category it fell in."""

    file: str
    node_id: str
    trigger_type: str  # as the builder wrote it
    category: str
    detail: str


def table(rows: list[Placed] | tuple[Placed, ...]) -> str:
    lines = [f"{'file':60} {'node':18} {'triggerType':11} {'category':38} detail"]
    lines += [
        f"{r.file:60} {r.node_id:18} {r.trigger_type:11} {r.category:38} {r.detail}" for r in rows
    ]
    counts = Counter(r.category for r in rows)
    lines.append("totals: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return "\n".join(lines)


# -- the JSON, read without the parser ------------------------------------------------------------


def raw_triggers(data: Any) -> dict[str, dict[str, Any]]:
    """node id → config of every node whose type is `trigger`, in either shape (React-Flow's
    `nodes[].data`, the backend's `nodes{id: {config}}`), a fixture's `definition` included."""
    definition = data.get("definition", data) if isinstance(data, dict) else {}
    nodes = definition.get("nodes") or {}
    pairs = nodes.items() if isinstance(nodes, dict) else [(n.get("id"), n) for n in nodes]
    found: dict[str, dict[str, Any]] = {}
    for node_id, raw in pairs:
        if isinstance(raw, dict) and raw.get("type") == "trigger":
            config = raw.get("config") if "config" in raw else raw.get("data")
            found[str(node_id)] = config if isinstance(config, dict) else {}
    return found


def raw_cron(config: dict[str, Any]) -> str | None:
    """The cron string as written (any builder spelling), if the node is a schedule."""
    kind = str(config.get("triggerType", config.get("type", ""))).strip().lower()
    if kind not in SCHEDULE_TRIGGER_TYPES:
        return None
    value = next((config[k] for k in ("schedule", "cron", "cronExpression") if config.get(k)), "")
    return str(value).strip() or None


def dagster_takes(cron: str) -> bool:
    """Asked of Dagster directly, not of the platform's validation."""
    try:
        dg.ScheduleDefinition(name="probe", cron_schedule=cron, job_name="probe")
    except dg.DagsterInvalidDefinitionError:
        return False
    return True


# -- the classification --------------------------------------------------------------------------


def _as_schedule(node_id: str, data: Any, default_timezone: str) -> tuple[str, str]:
    trigger = schedule_trigger(data)
    if trigger is None or trigger.node_id != node_id:
        picked = trigger.node_id if trigger else None
        return UNCLASSIFIED, f"valid, but the deployed schedule would come from {picked!r}"
    timezone = trigger.timezone or default_timezone
    entry = WorkflowSchedule(
        name="corpus_schedule",
        workflow_id="corpus",
        job_name="corpus_job",
        cron=trigger.cron,
        timezone=timezone,
        overlap=trigger.overlap,
        missed=trigger.missed,
    )
    try:
        built = make_workflow_schedule(entry)
        following = next_fire_time(trigger.cron, timezone, NOW)
    except (dg.DagsterInvalidDefinitionError, ValueError) as exc:
        return UNCLASSIFIED, f"valid, but Dagster refuses it: {exc}"
    if (built.cron_schedule, built.execution_timezone) != (trigger.cron, timezone):
        return UNCLASSIFIED, f"Dagster's schedule differs: {built.cron_schedule} {timezone}"
    detail = f"{trigger.cron} | {timezone} | overlap={trigger.overlap} | next {following:%a %H:%M}"
    return SCHEDULE, detail


def _as_schedule_problem(errors: list[Problem], raw: dict[str, Any]) -> tuple[str, str]:
    named = [
        p for p in errors if p.field and (p.field in raw or p.code == "missing_config")
    ]  # a missing field is named by its first spelling
    detail = ", ".join(f"{p.code}({p.field})" for p in errors)
    return (SCHEDULE_PROBLEM if named == errors else UNCLASSIFIED), detail


def deliveries_naming(provider: str, event: str) -> list[tuple[dict[str, str], Any]]:
    """(headers, payload) of the deliveries `provider` would send for `event`, built as it
    sends them (docs/triggers.md's table): what the hook's event filter then reads. GitHub,
    Stripe, Slack and Shopify name their events in lower case."""
    if provider in ("github", "stripe", "slack", "shopify"):
        event = event.lower().replace(" ", "_")
    head, _, rest = event.partition(".")
    if provider == "github":
        return [({"x-github-event": head}, {"action": rest} if rest else {})]
    if provider == "shopify":
        return [({"x-shopify-topic": event}, {})]
    if provider == "salesforce":
        return [({}, {"sObjects": [{"attributes": {"type": head.capitalize()}}]})]
    if provider == "discord":  # every interaction type, its name or custom_id the event's rest
        data = {"name": rest, "custom_id": rest} if rest else {}
        return [({}, {"type": kind, "data": data}) for kind in (*DISCORD_INTERACTIONS, 9)]
    payload = {"type": event, "event": {"type": event}, "event_type": event}  # stripe, slack, ...
    return [({}, payload)]


def _as_webhook(hook: Trigger, mine: list[Problem], raw: dict[str, Any]) -> tuple[str, str]:
    warned = [p for p in mine if p.code == "unverified_hook_provider"]
    undeliverable = [p for p in mine if p.code == "undeliverable_trigger_event"]
    provider = (hook.provider or "").strip().lower()
    detail = f"provider={hook.provider} event={hook.event}"
    if not provider:
        return (WEBHOOK_GENERIC if not (warned or undeliverable) else UNCLASSIFIED), detail
    verified = provider in VERIFIED_HOOK_PROVIDERS
    if verified != (provider_of(hook.provider) is not None):
        return UNCLASSIFIED, f"{detail}: VERIFIED_HOOK_PROVIDERS and hook_providers disagree"
    if verified:
        fires = not hook.event or any(
            unwanted_event(hook, headers, payload) is None
            for headers, payload in deliveries_naming(provider, hook.event)
        )
        if warned or fires == bool(undeliverable):
            return UNCLASSIFIED, f"{detail}: fires={fires}, warned {[p.code for p in mine]}"
        if not undeliverable:
            return WEBHOOK_VERIFIED, detail
        (said,) = undeliverable
        if (
            said.severity == "warning"
            and said.field == "event"
            and f"'{hook.event}'" in said.message
        ):
            return WEBHOOK_UNDELIVERABLE, f"{detail}, warned on {said.field}"
        return UNCLASSIFIED, f"{detail}: imprecise {said.describe()}"
    if (
        len(warned) == 1
        and not undeliverable
        and warned[0].severity == "warning"
        and warned[0].field in raw
        and str(hook.provider) in warned[0].message
        and (not hook.event or "not filtered" in warned[0].message)
        and (not hook.event or "X-FlowMaestro-Event" in warned[0].message)
    ):
        return WEBHOOK_UNVERIFIED, f"{detail}, warned on {warned[0].field}"
    return UNCLASSIFIED, f"{detail}: not verified and no unverified_hook_provider on its field"


def classify(name: str, data: Any) -> tuple[Placed, ...]:
    """Every trigger node of one definition, placed."""
    raw = raw_triggers(data)
    if not raw:
        return ()
    default_timezone = Settings().schedule_timezone
    spec, _ = parse_workflow(data)
    problems = validate(data)
    errors = [p for p in problems if p.severity == "error"]
    hooks: dict[str, Trigger] = {}
    if not errors:  # what a deploy stores: the compiled version's triggers, as a hook sees them
        version = WorkflowVersion(workflow_id=name, version=1, definition=data)
        hooks = {hook.id: hook for hook in triggers_of(version)}
    placed = []
    for node_id, config in sorted(raw.items()):
        kind = str(config.get("triggerType", config.get("type", "")))
        parsed = spec.nodes.get(node_id) if spec is not None else None
        mine = [p for p in problems if p.node_id == node_id]
        mine_errors = [p for p in mine if p.severity == "error"]
        if parsed is None or not isinstance(parsed.config, TriggerConfig):
            category, detail = UNCLASSIFIED, "the parser dropped it or read no trigger config"
        elif parsed.config.kind == "schedule" and mine_errors:
            category, detail = _as_schedule_problem(mine_errors, config)
        elif errors:
            category, detail = REJECTED, ", ".join(sorted({p.code for p in errors}))
        elif parsed.config.kind == "schedule":
            category, detail = _as_schedule(node_id, data, default_timezone)
        elif node_id in hooks and hooks[node_id].webhook:
            category, detail = _as_webhook(hooks[node_id], mine, config)
        elif parsed.config.kind == "manual" and not mine:
            category, detail = MANUAL, ""
        elif parsed.config.kind is None and [p.code for p in mine] == ["unknown_trigger_type"]:
            category, detail = UNSUPPORTED, f"warned on {mine[0].field}"
        else:
            said = "; ".join(p.describe() for p in mine) or "validation says nothing"
            category, detail = UNCLASSIFIED, f"not a schedule, a webhook or manual ({said})"
        placed.append(Placed(name, node_id, kind, category, detail))
    return tuple(placed)


@functools.cache
def classified(relative: str) -> tuple[Placed, ...]:
    return classify(relative, json.loads((CORPUS / relative).read_text()))


def everything() -> list[Placed]:
    return [row for path in FILES for row in classified(corpus_id(path))]


# -- the corpus ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", FILES, ids=corpus_id)
def test_every_trigger_of_the_file_works_or_is_a_precise_problem(path: Any) -> None:
    relative = corpus_id(path)
    rows = classified(relative)
    data = json.loads(path.read_text())
    assert [r.node_id for r in rows] == sorted(raw_triggers(data)), table(rows)
    assert all(r.category != UNCLASSIFIED for r in rows), table(rows)
    for row in rows:  # what the JSON says agrees with where the node landed
        cron = raw_cron(raw_triggers(data)[row.node_id])
        if cron is not None and dagster_takes(cron):
            assert row.category in (SCHEDULE, SCHEDULE_PROBLEM, REJECTED), table(rows)
        if row.trigger_type == "webhook":
            assert row.category in (*WEBHOOKS, REJECTED), table(rows)


def test_the_corpus_triggers_add_up() -> None:
    rows = everything()
    counts = Counter(r.category for r in rows)
    raw = {
        (corpus_id(path), node_id): config
        for path in FILES
        for node_id, config in raw_triggers(json.loads(path.read_text())).items()
    }
    valid_crons = [k for k, config in raw.items() if (c := raw_cron(config)) and dagster_takes(c)]
    webhooks = [k for k, config in raw.items() if config.get("triggerType") == "webhook"]
    report = table(rows)
    assert len(rows) == len(raw) >= MIN_TRIGGERS and counts[UNCLASSIFIED] == 0, report
    assert counts[SCHEDULE] >= len(valid_crons) >= MIN_SCHEDULES, report
    assert sum(counts[c] for c in WEBHOOKS) >= len(webhooks) >= MIN_WEBHOOKS, report
    assert counts[WEBHOOK_VERIFIED] >= 1 and counts[WEBHOOK_UNVERIFIED] >= 1, report
    assert counts[WEBHOOK_UNDELIVERABLE] >= 1, report
    timezones = {r.detail.split(" | ")[1] for r in rows if r.category == SCHEDULE}
    assert {Settings().schedule_timezone, "America/New_York"} <= timezones, report  # default, named


# -- the classifier itself: each category is reachable -------------------------------------------


def one_trigger(**data: Any) -> dict[str, Any]:
    return chain(node("t", "trigger", **data), node("out", "output", outputName="o", value="x"))


@pytest.mark.parametrize(
    ("data", "category", "detail"),
    [
        ({"triggerType": "cron", "cron": "*/5 * * * *"}, SCHEDULE, "*/5 * * * * | UTC |"),
        ({"triggerType": "schedule", "cron": "0 9 * *"}, SCHEDULE_PROBLEM, "(cron)"),
        (
            {"triggerType": "schedule", "schedule": "0 9 * * 1", "timeZone": "Mars/Olympus"},
            SCHEDULE_PROBLEM,
            "invalid_timezone(timeZone)",
        ),
        ({"triggerType": "webhook", "webhookProvider": "GitHub"}, WEBHOOK_VERIFIED, "GitHub"),
        ({"triggerType": "webhook"}, WEBHOOK_GENERIC, "provider=None"),
        ({"triggerType": "WEBHOOK"}, WEBHOOK_GENERIC, "provider=None"),
        ({"triggerType": "webhook", "provider": "acme"}, WEBHOOK_UNVERIFIED, "warned on provider"),
        (
            {"triggerType": "webhook", "provider": "acme", "event": "order.paid"},
            WEBHOOK_UNVERIFIED,
            "event=order.paid, warned on provider",
        ),
        (
            {"triggerType": "webhook", "provider": "discord", "event": "message"},
            WEBHOOK_UNDELIVERABLE,
            "warned on event",
        ),
        (
            {"triggerType": "webhook", "provider": "discord", "event": "application_command.hi"},
            WEBHOOK_VERIFIED,
            "event=application_command.hi",
        ),
        (
            {"triggerType": "webhook", "provider": "stripe", "event": "Invoice.Paid"},
            WEBHOOK_UNDELIVERABLE,
            "warned on event",
        ),
        (
            {"triggerType": "webhook", "provider": "github", "event": "pull_request.opened"},
            WEBHOOK_VERIFIED,
            "event=pull_request.opened",
        ),
        ({}, MANUAL, ""),
        ({"triggerType": "Schedule", "schedule": "0 9 * * 1"}, SCHEDULE, "0 9 * * 1 | UTC |"),
        ({"triggerType": "email", "event": "received"}, UNSUPPORTED, "warned on triggerType"),
    ],
)
def test_the_classifier_places_each_kind(data: dict[str, Any], category: str, detail: str) -> None:
    (placed,) = classify("synthetic", one_trigger(**data))
    assert (placed.category, placed.node_id) == (category, "t"), placed
    assert detail in placed.detail, placed


def test_a_definition_rejected_for_another_error_rejects_its_trigger() -> None:
    definition = one_trigger(triggerType="webhook")
    definition["edges"].append({"id": "dangling", "source": "out", "target": "nowhere"})
    (placed,) = classify("synthetic", definition)
    assert (placed.category, placed.detail) == (REJECTED, "edge_missing_node"), placed


def test_the_discord_bots_message_trigger_is_told_it_never_fires() -> None:
    """Discord's interactions endpoint never carries a channel message: the corpus bot's
    `event: "message"` is a warning naming the node and its `event` field, not a silent no-op."""
    (row,) = classified("patterns/intermediate/discord-community-bot.json")
    assert (row.node_id, row.category) == ("trigger-1", WEBHOOK_UNDELIVERABLE), row
    definition = json.loads((CORPUS / row.file).read_text())
    (said,) = [p for p in validate(definition) if p.code == "undeliverable_trigger_event"]
    assert (said.severity, said.node_id, said.field) == ("warning", "trigger-1", "event")
    assert "'message'" in said.message and "application_command" in said.message
