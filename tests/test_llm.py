"""The llm node through the real `openai` SDK against the fake OpenAI-compatible server."""

import socket
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from pydantic import SecretStr

from flowmaestro_dagster.errors import (
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.nodes import NodeResult, get_executor
from flowmaestro_dagster.settings import LLMProvider, LLMSettings, Settings
from flowmaestro_dagster.testing import FakeLLMServer, FakeReply, run_workflow
from flowmaestro_dagster.testing.fake_llm import API_KEY
from tests.builders import chain, flow, node, node_context


def run_node(
    node_type: str,
    raw: dict[str, Any],
    settings: Settings,
    inputs: dict[str, Any] | None = None,
    upstream: dict[str, Any] | None = None,
) -> NodeResult:
    """Run one node as a plain function; `upstream` maps predecessor ids to their outputs."""
    ctx = node_context(node_type, raw, {"settings": settings}, inputs=inputs, upstream=upstream)
    return get_executor(node_type)(ctx)


def settings_with(**providers: LLMProvider) -> Settings:
    return Settings().model_copy(update={"llm": LLMSettings(providers=providers)})


LLM_NODE = {
    "provider": "openai",
    "model": "gpt-4o",
    "prompt": "Summarise {{topic}} in {{words}} words",
    "systemPrompt": "You write for {{audience}}.",
    "temperature": 0.3,
    "maxTokens": 120,
    "outputVariable": "summary",
}
INPUTS = {"topic": "Dagster", "words": 5, "audience": "engineers"}


# -- as a plain function ---------------------------------------------------------------------------


def test_llm_output_shape_and_the_request_it_sends(llm: FakeLLMServer) -> None:
    llm.enqueue("Dagster runs data pipelines well")
    result = run_node("llm", LLM_NODE, llm.settings(), INPUTS)
    assert result.branches is None
    assert result.output == {
        "summary": {
            "text": "Dagster runs data pipelines well",
            "usage": {"promptTokens": 9, "completionTokens": 5, "totalTokens": 14},
            "model": "gpt-4o",
            "provider": "openai",
        }
    }
    [request] = llm.chat_requests
    assert request.model == "gpt-4o"
    assert request.system == "You write for engineers."
    assert request.prompt == "Summarise Dagster in 5 words"
    assert [m["role"] for m in request.messages] == ["system", "user"]
    assert request.temperature == 0.3
    assert request.max_tokens == 120
    assert request.body["max_tokens"] == 120
    assert request.headers["authorization"] == f"Bearer {API_KEY}"


def test_llm_without_output_variable_is_the_object_itself(llm: FakeLLMServer) -> None:
    llm.enqueue("hi")
    raw = {"provider": "openai", "model": "m", "prompt": "hello"}
    output = run_node("llm", raw, llm.settings()).output
    assert set(output) == {"text", "usage", "model", "provider"}
    assert output["text"] == "hi"
    # No system prompt, no temperature, no max tokens: none sent.
    [request] = llm.chat_requests
    assert [m["role"] for m in request.messages] == ["user"]
    assert "temperature" not in request.body
    assert "max_tokens" not in request.body


def test_model_reported_by_the_provider_is_the_output_model(llm: FakeLLMServer) -> None:
    llm.enqueue(FakeReply("x", model="gpt-4o-2024-08-06"))
    output = run_node("llm", {"model": "gpt-4o", "prompt": "p"}, llm.settings()).output
    assert output["model"] == "gpt-4o-2024-08-06"


def test_unconfigured_provider_fails_permanently_with_a_clear_error(llm: FakeLLMServer) -> None:
    raw = {**LLM_NODE, "provider": "anthropic"}
    with pytest.raises(
        NodeConfigurationError, match="no provider configured for 'anthropic'"
    ) as info:
        run_node("llm", raw, llm.settings("openai"), INPUTS)
    assert not info.value.retryable
    assert "FLOWMAESTRO_LLM__PROVIDERS__ANTHROPIC__BASE_URL" in str(info.value)
    assert llm.requests == []


def test_provider_names_match_case_and_dash_insensitively(llm: FakeLLMServer) -> None:
    settings = settings_with(lm_studio=llm.provider())
    output = run_node("llm", {"provider": "LM-Studio", "model": "m", "prompt": "p"}, settings)
    assert output.output["provider"] == "LM-Studio"
    assert len(llm.chat_requests) == 1


def test_api_key_from_a_named_environment_variable(
    llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_GATEWAY_KEY", "sk-from-env")
    settings = settings_with(openai=llm.provider(api_key=None, api_key_env="MY_GATEWAY_KEY"))
    run_node("llm", {"model": "m", "prompt": "p"}, settings)
    assert llm.chat_requests[0].headers["authorization"] == "Bearer sk-from-env"


def test_no_key_sends_a_placeholder_never_the_environments_openai_key(
    llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    settings = settings_with(ollama=llm.provider(api_key=None))
    run_node("llm", {"provider": "ollama", "model": "llama3", "prompt": "p"}, settings)
    assert "sk-must-not-leak" not in llm.chat_requests[0].headers["authorization"]


def test_model_aliases_default_model_and_extra_headers(llm: FakeLLMServer) -> None:
    provider = llm.provider(
        models={"gpt-4o": "llama3.1:8b"},
        default_model="qwen2.5",
        headers={"X-Gateway-Team": "flows"},
        max_tokens_field="max_completion_tokens",
    )
    settings = settings_with(openai=provider)
    run_node("llm", {"model": "gpt-4o", "prompt": "p", "maxTokens": 7}, settings)
    run_node("llm", {"prompt": "p"}, settings)
    first, second = llm.chat_requests
    assert first.model == "llama3.1:8b"
    assert first.body["max_completion_tokens"] == 7
    assert "max_tokens" not in first.body
    assert first.headers["x-gateway-team"] == "flows"
    assert second.model == "qwen2.5"


def test_no_model_and_no_default_model_is_a_configuration_error(llm: FakeLLMServer) -> None:
    with pytest.raises(NodeConfigurationError, match="no model"):
        run_node("llm", {"prompt": "p"}, llm.settings())


def test_empty_prompt_is_a_configuration_error(llm: FakeLLMServer) -> None:
    with pytest.raises(NodeConfigurationError, match="no prompt"):
        run_node("llm", {"model": "m", "prompt": "  "}, llm.settings())


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("7", 7.0), ("0.5", 0.5), (None, None)],
)
def test_429_is_transient_and_carries_retry_after(
    llm: FakeLLMServer, retry_after: str | None, expected: float | None
) -> None:
    llm.enqueue(FakeReply.rate_limited(retry_after=retry_after))
    with pytest.raises(TransientNodeError, match="429") as info:
        run_node("llm", LLM_NODE, llm.settings(), INPUTS)
    assert info.value.retryable
    assert info.value.retry_after_seconds == expected
    assert info.value.details["status"] == 429


def test_429_retry_after_as_an_http_date(llm: FakeLLMServer) -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    llm.enqueue(FakeReply.rate_limited(retry_after=format_datetime(when, usegmt=True)))
    with pytest.raises(TransientNodeError) as info:
        run_node("llm", LLM_NODE, llm.settings(), INPUTS)
    assert info.value.retry_after_seconds is not None
    assert 100 < info.value.retry_after_seconds <= 120


@pytest.mark.parametrize("status", [500, 502, 503, 408])
def test_5xx_is_transient_and_the_sdk_does_not_retry_itself(
    llm: FakeLLMServer, status: int
) -> None:
    llm.enqueue(FakeReply.error(status, "upstream overloaded"))
    with pytest.raises(TransientNodeError, match=f"HTTP {status}: upstream overloaded"):
        run_node("llm", LLM_NODE, llm.settings(), INPUTS)
    assert len(llm.chat_requests) == 1  # Dagster's RetryPolicy retries, not the SDK


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_are_permanent(llm: FakeLLMServer, status: int) -> None:
    llm.enqueue(FakeReply.error(status, "bad request: unknown model"))
    with pytest.raises(NodeExecutionError, match=f"HTTP {status}") as info:
        run_node("llm", LLM_NODE, llm.settings(), INPUTS)
    assert not isinstance(info.value, TransientNodeError)
    assert not info.value.retryable
    assert len(llm.chat_requests) == 1


def test_a_timeout_is_transient(llm: FakeLLMServer) -> None:
    llm.enqueue(FakeReply("late", delay_s=5))
    settings = settings_with(openai=llm.provider(timeout_s=0.3))
    started = time.monotonic()
    with pytest.raises(TransientNodeError, match="timed out"):
        run_node("llm", LLM_NODE, settings, INPUTS)
    assert time.monotonic() - started < 4


def test_an_unreachable_provider_is_transient() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = LLMProvider(base_url=f"http://127.0.0.1:{port}/v1", api_key=SecretStr("k"))
    with pytest.raises(TransientNodeError, match="cannot reach"):
        run_node("llm", LLM_NODE, settings_with(openai=provider), INPUTS)


def test_the_fake_server_records_requests_and_answers_from_a_responder() -> None:
    def responder(request: Any) -> str | None:
        return f"echo: {request.prompt}" if "echo" in (request.prompt or "") else None

    with FakeLLMServer(responder=responder, default="fallback") as server:
        settings = server.settings()
        first = run_node("llm", {"model": "m", "prompt": "echo me"}, settings).output
        second = run_node("llm", {"model": "m", "prompt": "other"}, settings).output
    assert first["text"] == "echo: echo me"
    assert second["text"] == "fallback"
    assert [r.prompt for r in server.chat_requests] == ["echo me", "other"]


# -- through a compiled job ------------------------------------------------------------------------


def summary_flow(retry: dict[str, Any] | None = None) -> dict[str, Any]:
    llm_node: dict[str, Any] = {"id": "llm-1", "type": "llm", **LLM_NODE}
    if retry is not None:
        llm_node["retry"] = retry
    return flow(
        [
            {"id": "topic", "type": "input", "inputName": "topic"},
            llm_node,
            {
                "id": "shout",
                "type": "transform",
                "operation": "template",
                "template": "{{summary.text}}!",
                "outputVariable": "loud",
            },
            {"id": "out", "type": "output", "outputName": "result", "value": "{{loud}}"},
        ],
        [("topic", "llm-1"), ("llm-1", "shout"), ("shout", "out")],
    )


def test_llm_in_a_compiled_job_feeds_text_downstream(llm: FakeLLMServer) -> None:
    llm.enqueue("Pipelines, orchestrated")
    result = run_workflow(summary_flow(), INPUTS, settings=llm.settings())
    assert result.status == "succeeded", result.nodes
    assert result.outputs == {"result": "Pipelines, orchestrated!"}
    assert result.nodes["llm-1"].output["summary"]["text"] == "Pipelines, orchestrated"
    assert llm.chat_requests[0].prompt == "Summarise Dagster in 5 words"


def test_a_429_is_retried_by_dagster_and_then_succeeds(llm: FakeLLMServer) -> None:
    llm.enqueue(FakeReply.rate_limited(retry_after=0), "after the retry")
    definition = summary_flow(retry={"maxAttempts": 2, "minDelayMs": 0})
    result = run_workflow(definition, INPUTS, settings=llm.settings())
    assert result.status == "succeeded", result.nodes
    assert result.nodes["llm-1"].attempts == 2
    assert result.outputs == {"result": "after the retry!"}
    assert len(llm.chat_requests) == 2


def test_a_400_fails_the_run_without_retrying(llm: FakeLLMServer) -> None:
    llm.enqueue(FakeReply.error(400, "model not found"))
    definition = summary_flow(retry={"maxAttempts": 3, "minDelayMs": 0})
    result = run_workflow(definition, INPUTS, settings=llm.settings())
    assert result.status == "failed"
    node = result.nodes["llm-1"]
    assert node.status == "failed"
    assert node.attempts == 1
    assert "model not found" in (node.error or "")
    assert result.nodes["shout"].status in ("not_run", "skipped")
    assert len(llm.chat_requests) == 1


def test_an_unconfigured_provider_fails_the_run_with_its_name(llm: FakeLLMServer) -> None:
    definition = summary_flow()
    definition["nodes"][1]["data"]["provider"] = "mistral"
    result = run_workflow(definition, INPUTS, settings=llm.settings("openai"))
    assert result.status == "failed"
    assert "no provider configured for 'mistral'" in (result.nodes["llm-1"].error or "")


# -- vision and embeddings -------------------------------------------------------------------------

PNG_BASE64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="


def test_vision_sends_the_images_as_image_url_parts(llm: FakeLLMServer) -> None:
    llm.enqueue("A cat on a sofa")
    raw = {
        "provider": "openai",
        "model": "gpt-4o",
        "operation": "analyze",
        "imageInput": "{{photo.url}}",
        "prompt": "Describe the {{what}}",
        "detail": "high",
        "maxTokens": 300,
        "outputVariable": "analysis",
    }
    inputs = {"photo": {"url": "https://img.example/cat.jpg"}, "what": "scene"}
    output = run_node("vision", raw, llm.settings(), inputs).output
    assert output["analysis"]["text"] == "A cat on a sofa"
    assert set(output["analysis"]) == {"text", "usage", "model", "provider"}
    [request] = llm.chat_requests
    [message] = request.messages
    assert message["content"] == [
        {"type": "text", "text": "Describe the scene"},
        {
            "type": "image_url",
            "image_url": {"url": "https://img.example/cat.jpg", "detail": "high"},
        },
    ]
    assert request.max_tokens == 300


def test_vision_turns_base64_into_a_data_url_and_needs_an_image(llm: FakeLLMServer) -> None:
    run_node("vision", {"model": "m", "image": PNG_BASE64}, llm.settings())
    part = llm.chat_requests[0].messages[0]["content"][1]
    assert part["image_url"]["url"] == f"data:image/png;base64,{PNG_BASE64}"
    with pytest.raises(NodeConfigurationError, match="no image"):
        run_node("vision", {"model": "m", "prompt": "describe"}, llm.settings())


def test_embeddings_of_a_text_and_of_a_list(llm: FakeLLMServer) -> None:
    from flowmaestro_dagster.testing.fake_llm import fake_embedding

    one = run_node(
        "embeddings",
        {"model": "text-embedding-3-small", "input": "{{topic}}", "dimensions": 8},
        llm.settings(),
        INPUTS,
    ).output
    assert one["embedding"] == fake_embedding("Dagster")
    assert one["embeddings"] == [fake_embedding("Dagster")]
    assert one["dimensions"] == 8
    assert one["model"] == "text-embedding-3-small"
    request = llm.requests[0].body
    assert (request["model"], request["input"], request["dimensions"]) == (
        "text-embedding-3-small",
        ["Dagster"],
        8,
    )
    many = run_node(
        "embeddings", {"model": "m", "texts": ["a", "b"], "outputVariable": "vec"}, llm.settings()
    ).output
    assert many["vec"]["embeddings"] == [fake_embedding("a"), fake_embedding("b")]


def test_embeddings_errors_are_classified(llm: FakeLLMServer) -> None:
    llm.enqueue(FakeReply.rate_limited(retry_after=2))
    with pytest.raises(TransientNodeError) as info:
        run_node("embeddings", {"model": "m", "input": "x"}, llm.settings())
    assert info.value.retry_after_seconds == 2.0
    with pytest.raises(NodeConfigurationError, match="no input"):
        run_node("embeddings", {"model": "m", "input": ""}, llm.settings())


def test_vision_and_embeddings_in_a_compiled_job(llm: FakeLLMServer) -> None:
    llm.enqueue("a red bicycle")
    definition = chain(
        node("photo", "input", inputName="photoUrl"),
        node("look", "vision", model="gpt-4o", imageInput="{{photoUrl}}", prompt="What is it?", outputVariable="seen"),
        node("embed", "embeddings", model="e", input="{{seen.text}}"),
        node("out", "output", outputName="dims", value="{{embed.dimensions}}"),
        react=True,
    )  # fmt: skip
    result = run_workflow(
        definition, {"photoUrl": "https://img.example/b.png"}, settings=llm.settings()
    )
    assert result.status == "succeeded", result.nodes
    assert result.outputs == {"dims": 8}
    assert llm.requests[-1].body["input"] == ["a red bicycle"]
