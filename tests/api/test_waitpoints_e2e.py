"""Durable waitpoints end to end: a real Dagster (webserver, daemon, sensors) and the API.

Approvals (API and the browser page), a datetime wait, signed callbacks, child executions,
concurrent decisions, waitpoints in sequence and inside a loop. Each resume must re-execute
only the waitpoint and what follows it (checked in Dagster's step stats).
"""

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from flowmaestro_api.main import create_app
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.control.waitpoints import sign
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.testing.stack import DagsterStack
from tests.api import e2e
from tests.api.e2e import (
    approvals_of,
    chromium_page,
    decide,
    deploy,
    execution,
    node_statuses,
    parked_run,
    rerun_steps,
    runs_of,
    serving,
    start,
    status_is,
    step_keys,
    wait_for,
)
from tests.builders import chain, flow, node

pytestmark = pytest.mark.slow
SECRET_KEY = "test-secret-key-0123456789"
SIGNING_SECRET = "test-signing-secret-0123456789"

stack = e2e.stack_fixture(
    "waitpoints",
    FLOWMAESTRO_WAIT_SLEEP_THRESHOLD_SECONDS="0.5",
    FLOWMAESTRO_WAITPOINT_INTERVAL_SECONDS="1",
    FLOWMAESTRO_SECRET_KEY=SECRET_KEY,
    FLOWMAESTRO_CALLBACK_SIGNING_SECRET=SIGNING_SECRET,
    FLOWMAESTRO_HTTP__ALLOW_LOOPBACK="true",  # approval notifications reach a local receiver
)
settings = e2e.settings_fixture(
    secret_key=SECRET_KEY,
    callback_signing_secret=SIGNING_SECRET,
    wait_sleep_threshold_seconds=0.5,
)
dagster_client, client, auth = e2e.dagster_client, e2e.client, e2e.auth


def approval_flow(prompt: str = "Ship {{who}}?") -> dict[str, Any]:
    """React-Flow shape: in → prep → review → ok? → yes (approved) | no (rejected)."""
    return flow(
        [
            node("in", "input", inputName="who"),
            node("prep", "transform", transformType="template", template="prepared {{who}}", outputVariable="prepared"),
            node("review", "humanReview", label="Manager OK", reviewPrompt=prompt, outputVariable="approval"),
            node("ok", "conditional", condition="approval.approved === true"),
            node("yes", "output", outputName="result", value="approved {{prepared}}"),
            node("no", "output", outputName="result", value="rejected: {{approval.comment}}"),
        ],
        [
            ("in", "prep"),
            ("prep", "review"),
            ("review", "ok"),
            ("ok", "yes", "true"),
            ("ok", "no", "false"),
        ],
        name="Approval",
    )  # fmt: skip


def test_approval_round_trip_through_the_api(
    client: TestClient, auth: dict[str, str], stack: DagsterStack
) -> None:
    workflow_id = deploy(client, auth, approval_flow())
    execution_id = start(client, auth, workflow_id, {"who": "v2"})
    waiting = status_is(client, auth, execution_id, "waiting")
    nodes = node_statuses(waiting)
    assert (
        nodes["review"] == "waiting" and nodes["prep"] == "succeeded" and nodes["ok"] == "skipped"
    )
    assert waiting["waitpoints"][0]["kind"] == "approval"
    parked = parked_run(stack, waiting)
    mine = approvals_of(client, auth, execution_id)
    assert len(mine) == 1 and mine[0]["prompt"] == "Ship v2?"
    bad = client.post(
        f"/approvals/{mine[0]['id']}/decision", json={"decision": "maybe"}, headers=auth
    )
    assert bad.status_code == 422
    decided = client.post(
        f"/approvals/{mine[0]['id']}/decision", json={"decision": "approve"}, headers=auth
    )
    assert decided.status_code == 200 and decided.json()["status"] == "resolved"
    again = client.post(
        f"/approvals/{mine[0]['id']}/decision", json={"decision": "reject"}, headers=auth
    )
    assert again.status_code == 409 and again.headers["content-type"] == "application/problem+json"
    done = status_is(client, auth, execution_id, "succeeded", "failed")
    assert done["status"] == "succeeded", done
    assert done["outputs"] == {"result": "approved prepared v2"}
    resumed = rerun_steps(stack, done, parked)
    aliases = build_job(approval_flow()).aliases  # op names carry labels (issue #7)
    assert aliases["prep"] not in resumed and aliases["in"] not in resumed
    assert aliases["review"] in resumed


def test_reject_takes_the_other_branch(client: TestClient, auth: dict[str, str]) -> None:
    workflow_id = deploy(client, auth, approval_flow())
    execution_id = start(client, auth, workflow_id, {"who": "v3"})
    status_is(client, auth, execution_id, "waiting")
    [approval] = approvals_of(client, auth, execution_id)
    decide(client, auth, approval["id"], decision="reject", comment="too risky")
    done = status_is(client, auth, execution_id, "succeeded", "failed")
    assert done["outputs"] == {"result": "rejected: too risky"}


def test_fifty_concurrent_decisions_resume_once(
    client: TestClient, auth: dict[str, str], stack: DagsterStack
) -> None:
    workflow_id = deploy(client, auth, approval_flow())
    execution_id = start(client, auth, workflow_id, {"who": "race"})
    status_is(client, auth, execution_id, "waiting")
    [approval] = approvals_of(client, auth, execution_id)

    def decide_once(i: int) -> int:
        response = client.post(
            f"/approvals/{approval['id']}/decision",
            json={"decision": "approve" if i % 2 else "reject"},
            headers=auth,
        )
        return response.status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(decide_once, range(50)))
    assert codes.count(200) == 1 and codes.count(409) == 49, codes
    done = status_is(client, auth, execution_id, "succeeded", "failed")
    time.sleep(4)  # a few sensor ticks: still one resume
    assert len(execution(client, auth, execution_id)["runs"]) == 2
    assert done["status"] == "succeeded"


def wait_flow(seconds: float) -> dict[str, Any]:
    return chain(
        node("in", "input", inputName="who"),
        node("pause", "wait", durationValue=seconds, durationUnit="seconds"),
        node("out", "output", outputName="done", value="{{who}} after {{pause.wait.dueAt}}"),
        name="Timer",
    )


def test_a_datetime_wait_parks_and_resumes_when_due(
    client: TestClient, auth: dict[str, str]
) -> None:
    workflow_id = deploy(client, auth, wait_flow(2))
    execution_id = start(client, auth, workflow_id, {"who": "tick"})
    done = status_is(client, auth, execution_id, "succeeded", "failed")
    assert done["status"] == "succeeded"
    assert done["outputs"]["done"].startswith("tick after ")
    assert len(done["runs"]) == 2  # parked, then resumed by the sensor
    assert (
        done["waitpoints"][0]["kind"] == "datetime" and done["waitpoints"][0]["status"] == "resumed"
    )


def callback_flow() -> dict[str, Any]:
    return chain(
        node("in", "input", inputName="doc"),
        node("signed", "wait", waitType="webhook", outputVariable="signature"),
        node("out", "output", outputName="envelope", value="{{signature.payload.envelope}}"),
        name="Signature",
    )


def test_signed_callbacks_complete_a_webhook_wait(client: TestClient, auth: dict[str, str]) -> None:
    workflow_id = deploy(client, auth, callback_flow())
    execution_id = start(client, auth, workflow_id, {"doc": "nda"})
    waiting = status_is(client, auth, execution_id, "waiting")
    url: str = waiting["waitpoints"][0]["callback_url"]
    path = url.split("://", 1)[1].split("/", 1)[1]
    body = json.dumps({"envelope": "env-42"}).encode()
    now = int(time.time())
    secret = SIGNING_SECRET

    token = path.rsplit("/", 1)[1]
    forged = path[:-4] + "0000"

    def post(token_path: str, signature: str | None) -> int:
        headers = {"content-type": "application/json"} | (
            {"FlowMaestro-Signature": signature} if signature else {}
        )
        return client.post(f"/{token_path}", content=body, headers=headers).status_code

    assert post(path, None) == 401
    assert post(path, sign("wrong-secret-0123456789", body, now, bound_to=token)) == 401
    stale = sign(secret, body, now - 3600, bound_to=token)  # outside the 5-minute tolerance
    assert post(path, stale) == 401
    assert post(path, sign(secret, body, now)) == 401  # not bound to this callback's token
    assert post(forged, sign(secret, body, now, bound_to=forged.rsplit("/", 1)[1])) == 404
    assert execution(client, auth, execution_id)["status"] == "waiting"  # nothing changed
    assert post(path, sign(secret, body, now, bound_to=token)) == 200
    assert post(path, sign(secret, body, now, bound_to=token)) == 403  # used
    done = status_is(client, auth, execution_id, "succeeded", "failed")
    assert done["outputs"] == {"envelope": "env-42"}


def test_waitpoints_in_sequence_chain_resumed_runs(
    client: TestClient, auth: dict[str, str]
) -> None:
    definition = approval_flow()
    definition["nodes"].insert(
        3,
        {
            "id": "second",
            "type": "humanReview",
            "data": {"reviewPrompt": "Really?", "variableName": "again", "inputType": "number"},
        },
    )
    definition["edges"][2] = {"id": "c", "source": "review", "target": "second"}
    definition["edges"].append({"id": "f", "source": "second", "target": "ok"})
    yes = next(n for n in definition["nodes"] if n["id"] == "yes")
    yes["data"]["value"] = "approved {{prepared}} x{{again.response}}"
    workflow_id = deploy(client, auth, definition)
    execution_id = start(client, auth, workflow_id, {"who": "seq"})
    for decision in ({"decision": "approve"}, {"decision": "respond", "value": "3"}):
        status_is(client, auth, execution_id, "waiting")
        pending = wait_for(lambda: approvals_of(client, auth, execution_id))
        decided_id = pending[0]["id"]
        decide(client, auth, decided_id, **decision)
        wait_for(
            lambda decided_id=decided_id: (
                decided_id not in {a["id"] for a in approvals_of(client, auth, execution_id)}
            )
        )
    done = status_is(client, auth, execution_id, "succeeded", "failed")
    assert done["outputs"] == {"result": "approved prepared seq x3"}
    runs = done["runs"]
    assert (
        len(runs) == 3
        and runs[1]["parent_run_id"] == runs[0]["run_id"]
        and runs[2]["parent_run_id"] == runs[1]["run_id"]
    )


def test_child_executions_succeed_and_fail(client: TestClient, auth: dict[str, str]) -> None:
    child = chain(
        node("in", "input", inputName="raw"),
        node("parse", "transform", operation="parseJSON", inputData="{{raw}}", outputVariable="parsed"),
        node("out", "output", outputName="n", value="{{parsed.n}}"),
        name="Child",
    )  # fmt: skip
    child_id = deploy(client, auth, child)
    parent = chain(
        node("in", "input", inputName="raw"),
        node("call", "subworkflow", workflowId=child_id, inputs={"raw": "{{raw}}"}, outputVariable="child"),
        node("out", "output", outputName="got", value="{{child.outputs.n}}"),
        name="Parent",
    )  # fmt: skip
    parent_id = deploy(client, auth, parent)
    ok = start(client, auth, parent_id, {"raw": '{"n": 7}'})
    bad = start(client, auth, parent_id, {"raw": "{broken"})
    done_ok = status_is(client, auth, ok, "succeeded", "failed")
    done_bad = status_is(client, auth, bad, "succeeded", "failed")
    assert done_ok["status"] == "succeeded" and done_ok["outputs"] == {"got": 7}
    assert done_bad["status"] == "failed"
    call = next(n for n in done_bad["nodes"] if n["node_id"] == "call")
    assert call["status"] == "failed"


def test_each_loop_item_gets_its_own_approval(client: TestClient, auth: dict[str, str]) -> None:
    definition = chain(
        node("in", "input", inputName="items", inputType="json"),
        node("each", "loop", collection="{{items}}", itemVariable="item"),
        node("ask", "humanReview", reviewPrompt="Approve {{item}}?", outputVariable="approval"),
        node("mark", "transform", transformType="template", template="{{item}}:{{approval.decision}}", outputVariable="mark"),
        node("out", "output", outputName="marks", value="{{mark}}"),
        name="Loop approvals",
    )  # fmt: skip
    workflow_id = deploy(client, auth, definition)
    execution_id = start(client, auth, workflow_id, {"items": ["a", "b", "c"]})
    status_is(client, auth, execution_id, "waiting")
    approvals = wait_for(lambda: approvals_of(client, auth, execution_id))
    assert sorted(a["prompt"] for a in approvals) == ["Approve a?", "Approve b?", "Approve c?"]
    by_prompt = {a["prompt"]: a["id"] for a in approvals}
    decide(client, auth, by_prompt["Approve a?"], decision="approve")
    decide(client, auth, by_prompt["Approve c?"], decision="reject")
    time.sleep(3)
    assert execution(client, auth, execution_id)["status"] == "waiting"  # b is still open
    decide(client, auth, by_prompt["Approve b?"], decision="approve")
    done = status_is(client, auth, execution_id, "succeeded", "failed")
    assert done["status"] == "succeeded", done
    assert done["outputs"] == {"marks": ["a:approve", "b:approve", "c:reject"]}


def test_approval_page_works_in_a_real_browser(
    stack: DagsterStack, settings: ApiSettings, auth: dict[str, str], client: TestClient
) -> None:
    import threading

    import uvicorn

    from flowmaestro_dagster.testing.stack import free_port

    port = free_port()
    page_settings = settings.model_copy(update={"public_api_url": f"http://127.0.0.1:{port}"})
    dagster = DagsterClient(settings.dagster_graphql_url, instance=stack.instance())
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(page_settings, dagster=dagster),
            host="127.0.0.1",
            port=port,
            log_level="error",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=30, interval=0.05)
    try:
        workflow_id = deploy(client, auth, approval_flow("Publish the <b>{{who}}</b> post?"))
        execution_id = start(client, auth, workflow_id, {"who": "launch"})
        status_is(client, auth, execution_id, "waiting")
        approval = next(
            a
            for a in client.get("/approvals", headers=auth).json()["items"]
            if a["execution_id"] == execution_id
        )
        link = httpx_post_json(f"http://127.0.0.1:{port}/approvals/{approval['id']}/link", auth)[
            "url"
        ]
        with chromium_page() as page:
            page.goto(link)
            assert (
                page.text_content("#prompt") == "Publish the <b>launch</b> post?"
            )  # escaped, not HTML
            page.fill("#value", "ship it")  # the review's response is required
            page.fill("#comment", "looks good")
            page.click("#approve")
            page.wait_for_selector("#result")
            assert page.text_content("#result") == "Recorded: approved."
            page.goto(link)  # one-time: the link does not decide twice
            assert "already decided" in (page.text_content("#result") or "")
        done = status_is(client, auth, execution_id, "succeeded", "failed")
        assert done["outputs"] == {"result": "approved prepared launch"}
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def httpx_post_json(url: str, headers: dict[str, str]) -> dict[str, Any]:
    import httpx

    response = httpx.post(url, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def test_a_killed_run_worker_is_resumed_without_redoing_finished_nodes(
    client: TestClient, stack: DagsterStack, auth: dict[str, str]
) -> None:
    """SIGKILL the run worker while a node runs: run monitoring marks the run failed, run
    retries re-execute it from failure, and the nodes that had finished are not run again."""
    import os
    import signal

    from dagster import DagsterRunStatus

    from flowmaestro_dagster.engines.launcher import PID_TAG

    definition = chain(
        node("in", "input", inputName="who"),
        node("prep", "transform", operation="template", template="prepared {{who}}"),
        node("slow", "transform", operation="passthrough", delayMs=4000),
        node("out", "output", outputName="done", value="{{who}}"),
        name="Crash",
    )
    steps = build_job(definition).aliases
    workflow_id = deploy(client, auth, definition)
    execution_id = start(client, auth, workflow_id, {"who": "crash"})
    instance = stack.instance()

    def runs() -> list[Any]:
        return sorted(
            runs_of(instance, execution_id),
            key=lambda run: instance.get_run_record_by_id(run.run_id).create_timestamp,
        )

    def slow_started() -> Any:
        found = runs()
        if not found:
            return None
        stats = {s.step_key: s for s in instance.get_run_step_stats(found[0].run_id)}
        slow = stats.get(steps["slow"])
        return found[0] if slow is not None and slow.start_time is not None else None

    first = wait_for(slow_started, interval=0.1)
    os.kill(int(instance.get_run_by_id(first.run_id).tags[PID_TAG]), signal.SIGKILL)

    done = status_is(client, auth, execution_id, "succeeded", "failed")
    assert done["status"] == "succeeded", done
    assert done["outputs"] == {"done": "crash"}
    first_run, retry = runs()[:2]
    assert instance.get_run_by_id(first_run.run_id).status == DagsterRunStatus.FAILURE
    assert retry.parent_run_id == first_run.run_id
    finished_first = {
        s.step_key
        for s in instance.get_run_step_stats(first_run.run_id)
        if s.status is not None and s.status.value == "SUCCESS"
    }
    assert {steps["in"], steps["prep"]} <= finished_first
    rerun = step_keys(instance, retry.run_id)
    assert rerun == {steps["slow"], steps["out"]}  # in and prep were not run again


def _sse(lines: Any, until: set[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, event, data) from an SSE line iterator, up to the first event named in `until`."""
    found: list[tuple[str, str, dict[str, Any]]] = []
    event_id, name = "", ""
    for line in lines:
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            found.append((event_id, name, json.loads(line[6:])))
            if name in until:
                return found
            event_id = name = ""
    return found


def test_live_events_follow_an_execution_across_its_wait_and_resume(
    settings: ApiSettings, dagster_client: DagsterClient, client: TestClient, auth: dict[str, str]
) -> None:
    """One SSE client from submit to finish through an approval: the stream goes on past the
    parked run, the client drops mid-stream and resumes with Last-Event-ID, and the two parts
    are exactly what a reader from the start gets (no loss, no duplicates)."""
    import httpx

    workflow_id = deploy(client, auth, approval_flow())
    execution_id = start(client, auth, workflow_id, {"who": "sse"})
    app = create_app(settings, dagster=dagster_client)
    with serving(app) as base:
        url = f"{base}/executions/{execution_id}/events"
        with httpx.stream("GET", url, headers=auth, timeout=120) as stream:
            first = _sse(stream.iter_lines(), {"execution.waiting", "end"})
        assert first[-1][1] == "execution.waiting", first
        waiting = first[-1][2]
        assert [w["kind"] for w in waiting["waitpoints"]] == ["approval"]
        assert waiting["waitpoints"][0]["node_id"] == "review"
        assert waiting["waitpoints"][0]["approval_url"].endswith(
            f"/approvals/{waiting['waitpoints'][0]['waitpoint_id']}"
        )
        [approval] = approvals_of(client, auth, execution_id)
        decide(client, auth, approval["id"], decision="approve")
        resume_from = {**auth, "Last-Event-ID": first[-1][0]}
        with httpx.stream("GET", url, headers=resume_from, timeout=120) as stream:
            second = _sse(stream.iter_lines(), {"end"})
        with httpx.stream("GET", url, headers=auth, timeout=120) as stream:
            whole = _sse(stream.iter_lines(), {"end"})
        for bad in (
            "garbage",
            f"{'0' * 8}.0.1",  # another execution's
            f"{execution_id[:8]}.9.1",  # a run it does not have
            f"{execution_id[:8]}.0.999999999",  # past the end of its log
        ):
            refused = httpx.get(url, headers={**auth, "Last-Event-ID": bad}, timeout=30)
            assert refused.status_code == 400, (bad, refused.text)
            assert refused.json()["code"] == "invalid_last_event_id"
    names = [name for _, name, _ in second]
    assert names[-1] == "end" and second[-1][2]["status"] == "succeeded"
    assert "execution.resumed" in names and "execution.waiting" not in names
    resumed_nodes = {d.get("node_id") for _, name, d in second if name == "node.started"}
    assert "review" in resumed_nodes and "prep" not in resumed_nodes
    ids = [event_id for event_id, _, _ in first + second if event_id]
    assert len(ids) == len(set(ids))
    key = [tuple(int(p) for p in i.split(".")[1:]) for i in ids]
    assert key == sorted(key)  # monotonic within the execution
    assert [(i, n) for i, n, _ in whole] == [(i, n) for i, n, _ in first + second]


def test_expiry_rejects_or_takes_the_timeout_branch_and_notifies_on_a_real_stack(
    client: TestClient, auth: dict[str, str], stack: DagsterStack
) -> None:
    """Two reviews that expire after 3 and 5 s: `onTimeout: reject` ends on the rejected output,
    `onTimeout: timeout` on the branch its conditional routes; the sensor posts the second
    one's notification to a local receiver and logs `approval.notified` and
    `waitpoint.expired` on the parked runs."""
    from dagster import DagsterEventType

    from flowmaestro_dagster.tags import EVENT_DATA_METADATA, EVENT_KIND_METADATA
    from flowmaestro_dagster.testing import EchoServer

    def expiring(action: str, condition: str, timeout: int, **review: Any) -> dict[str, Any]:
        return flow(
            [
                node("in", "input", inputName="who"),
                node("review", "humanReview", reviewPrompt="Ship {{who}}?", outputVariable="approval", timeout=timeout, onTimeout=action, **review),
                node("ok", "conditional", condition=condition),
                node("yes", "output", outputName="result", value="{{approval.decision}} by {{approval.decidedBy}}"),
                node("no", "output", outputName="result", value="no: {{approval.decision}} {{approval.comment}}"),
            ],
            [("in", "review"), ("review", "ok"), ("ok", "yes", "true"), ("ok", "no", "false")],
            name=f"Expiring {action}",
        )  # fmt: skip

    def platform_events(run_id: str, kind: str) -> list[dict[str, Any]]:
        records = (
            stack.instance()
            .get_records_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT)
            .records
        )
        found = []
        for record in records:
            event = record.event_log_entry.dagster_event
            metadata = event.engine_event_data.metadata if event is not None else {}
            if (kind_value := metadata.get(EVENT_KIND_METADATA)) and kind_value.value == kind:
                found.append(dict(metadata[EVENT_DATA_METADATA].value))
        return found

    with EchoServer() as receiver:
        hook = receiver.url("/approvals")
        rejecting = deploy(client, auth, expiring("reject", "approval.approved === true", 3000))
        routing = deploy(
            client,
            auth,
            expiring(
                "timeout",
                "approval.decision === 'timeout'",
                5000,  # a sensor tick (every second) notifies before it expires
                notify=[{"channel": "webhook", "url": hook}],
            ),
        )
        rejected_id = start(client, auth, rejecting, {"who": "a"})
        routed_id = start(client, auth, routing, {"who": "b"})
        rejected = status_is(client, auth, rejected_id, "succeeded", "failed")
        routed = status_is(client, auth, routed_id, "succeeded", "failed")
        sent = [json.loads(r.body) for r in receiver.requests]
    assert rejected["outputs"] == {"result": "no: reject expired"}
    assert routed["outputs"] == {"result": "timeout by expiry"}
    [waitpoint] = routed["waitpoints"]
    assert len(sent) == 1, waitpoint
    [request] = sent
    assert (request["event"], request["waitpointId"], request["prompt"]) == (
        "approval.requested",
        waitpoint["id"],
        "Ship b?",
    )
    assert waitpoint["notifications"]["state"] == "sent"
    parked = routed["runs"][0]["run_id"]
    assert platform_events(parked, "approval.notified") == [
        {
            "waitpoint_id": waitpoint["id"],
            "channel": "webhook",
            "to": hook,
            "ok": True,
            "error": None,
        }
    ]
    [expired] = platform_events(parked, "waitpoint.expired")
    assert (expired["waitpoint_id"], expired["decision"]) == (waitpoint["id"], "expire_timeout")
    [expired] = platform_events(rejected["runs"][0]["run_id"], "waitpoint.expired")
    assert expired["decision"] == "reject"
