"""llm, router, vision and embeddings nodes on OpenAI-compatible endpoints.

Providers are named in settings (`FLOWMAESTRO_LLM__PROVIDERS__<NAME>__BASE_URL` ...); a node's
`provider` picks one, so the same workflow runs on OpenAI, a gateway, vLLM or a local Ollama.
The official `openai` SDK makes the call with its own retries off: a 429, a 5xx, a timeout or a
lost connection is a `TransientNodeError` (a 429 carries its `Retry-After`) and Dagster's
RetryPolicy retries the step; any other 4xx is permanent.

Outputs (see docs/providers.md):

* llm: `{text, usage: {promptTokens, completionTokens, totalTokens}, model, provider}`, under
  `outputVariable` when set, so `{{summary.text}}` reads it.
* router: `{route, label, reason, text, usedDefault, usage, model, provider}` and, like the
  switch node, `outputVariable: <route value>`. Branch keys: `route-<index>` of the chosen
  route; on fallback `default` and the `defaultRoute`'s own key.
* vision: as llm, with the node's image(s) sent as `image_url` parts.
* embeddings: `{embedding, embeddings, dimensions, usage, model, provider}`.
"""

import contextlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowmaestro_dagster.errors import (
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.lang.expressions import to_text
from flowmaestro_dagster.nodes.base import Executor, NodeContext, NodeResult, wrap_output
from flowmaestro_dagster.nodes.net import parse_retry_after
from flowmaestro_dagster.settings import LLMProvider, Settings
from flowmaestro_dagster.spec.configs import LLMConfig, MediaConfig, Route, RouterConfig

if TYPE_CHECKING:  # the SDK takes ~2 s to import: only nodes that call a model load it
    import openai

# Sent as the key to endpoints that need none (Ollama, vLLM): the SDK insists on some key, and
# leaving it empty would make it read OPENAI_API_KEY and send that key to a foreign endpoint.
NO_API_KEY = "not-needed"
# Given explicitly so the SDK never takes OPENAI_BASE_URL from the environment.
OPENAI_BASE_URL = "https://api.openai.com/v1"
ROUTER_TEMPERATURE = 0.0


@dataclass(frozen=True)
class ChatReply:
    text: str
    usage: dict[str, int]
    model: str
    provider: str

    def as_output(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "usage": self.usage,
            "model": self.model,
            "provider": self.provider,
        }


@dataclass(frozen=True)
class Endpoint:
    """What a node calls: a configured provider (and the name it has in settings) and a model."""

    provider_name: str
    provider: LLMProvider
    model: str


def node_settings(ctx: NodeContext) -> Settings:
    """The settings the run was given (the services resource), else the environment's."""
    return ctx.settings


def resolve_provider(ctx: NodeContext, name: str | None) -> tuple[str, LLMProvider]:
    """The provider a node names (or the default one); unconfigured is a permanent error."""
    llm = node_settings(ctx).llm
    provider_name = (name or "").strip() or llm.default_provider
    provider = llm.provider(provider_name)
    if provider is None:
        key = re.sub(r"[^A-Za-z0-9]", "_", provider_name).upper()
        raise ctx.error(
            f"no provider configured for '{provider_name}' (set "
            f"FLOWMAESTRO_LLM__PROVIDERS__{key}__BASE_URL and __API_KEY or __API_KEY_ENV; "
            "see docs/providers.md)",
            NodeConfigurationError,
            details={"provider": provider_name},
        )
    if provider.base_url is None and _provider_key(provider_name) != "openai":
        raise ctx.error(f"provider '{provider_name}' has no base_url", NodeConfigurationError)
    return provider_name, provider


def _provider_key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def resolve_model(ctx: NodeContext, provider_name: str, provider: LLMProvider, model: Any) -> str:
    requested = ctx.render_text(model).strip() if model is not None else None
    chosen = provider.model_for(requested or None)
    if not chosen:
        raise ctx.error(
            f"no model: the node names none and provider '{provider_name}' has no default_model",
            NodeConfigurationError,
        )
    return chosen


def resolve_endpoint(ctx: NodeContext, provider: str | None, model: Any) -> Endpoint:
    """The provider and model a node names (or their defaults)."""
    provider_name, configured = resolve_provider(ctx, provider)
    return Endpoint(provider_name, configured, resolve_model(ctx, provider_name, configured, model))


def make_client(provider: LLMProvider) -> "openai.OpenAI":
    """An SDK client for one provider, with the SDK's own retries off (Dagster retries)."""
    import openai

    return openai.OpenAI(
        api_key=provider.resolved_api_key() or NO_API_KEY,
        base_url=provider.base_url or OPENAI_BASE_URL,
        timeout=provider.timeout_s,
        max_retries=0,
        default_headers=dict(provider.headers) or None,
    )


@contextlib.contextmanager
def provider_call(ctx: NodeContext, endpoint: Endpoint) -> Iterator["openai.OpenAI"]:
    """A client for one call; the SDK's errors leave as transient or permanent node errors."""
    import openai

    try:
        with make_client(endpoint.provider) as client:
            yield client
    except openai.OpenAIError as exc:
        raise provider_error(ctx, exc, endpoint) from exc


def chat_messages(ctx: NodeContext, system_prompt: Any, content: Any) -> list[dict[str, Any]]:
    """The user's message, after the node's system prompt (rendered) when it has one."""
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": ctx.render_text(system_prompt)})
    messages.append({"role": "user", "content": content})
    return messages


def chat(
    ctx: NodeContext,
    endpoint: Endpoint,
    messages: Sequence[Mapping[str, Any]],
    *,
    temperature: float | None = None,
    max_tokens: int | None = None,
) -> ChatReply:
    """One chat completion; provider errors become transient or permanent node errors."""
    provider_name, model = endpoint.provider_name, endpoint.model
    options: dict[str, Any] = {}
    if temperature is not None:
        options["temperature"] = temperature
    if max_tokens is not None:
        options[endpoint.provider.max_tokens_field] = int(max_tokens)
    with provider_call(ctx, endpoint) as client:
        completion = client.chat.completions.create(
            model=model,
            messages=list(messages),  # type: ignore[arg-type]
            **options,
        )
    if not completion.choices:
        raise ctx.error(
            f"provider '{provider_name}' returned no choices for model '{model}'",
            details={"provider": provider_name, "model": model},
        )
    message = completion.choices[0].message
    text = message.content if isinstance(message.content, str) else ""
    ctx.log.info(f"{ctx.node_id}: {provider_name}/{model} answered {len(text)} characters")
    return ChatReply(
        text=text,
        usage=usage_of(completion.usage),
        model=completion.model or model,
        provider=provider_name,
    )


def usage_of(usage: Any) -> dict[str, int]:
    def count(name: str) -> int:
        value = getattr(usage, name, None) if usage is not None else None
        return int(value) if isinstance(value, int | float) else 0

    return {
        "promptTokens": count("prompt_tokens"),
        "completionTokens": count("completion_tokens"),
        "totalTokens": count("total_tokens"),
    }


def provider_error(
    ctx: NodeContext, exc: "openai.OpenAIError", endpoint: Endpoint
) -> NodeExecutionError:
    """429, 5xx, 408, timeouts and connection errors are transient; the rest is permanent."""
    import openai

    provider_name, provider, model = endpoint.provider_name, endpoint.provider, endpoint.model
    where = f"provider '{provider_name}' (model '{model}')"
    details: dict[str, Any] = {"provider": provider_name, "model": model}
    if isinstance(exc, openai.APITimeoutError):
        return ctx.error(
            f"{where} timed out after {provider.timeout_s:g}s", TransientNodeError, details=details
        )
    if isinstance(exc, openai.APIConnectionError):
        return ctx.error(
            f"cannot reach {where} at {provider.base_url or 'the OpenAI API'}: {exc}",
            TransientNodeError,
            details=details,
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        details["status"] = status
        reason = f"{where} answered HTTP {status}: {_status_message(exc)}"
        if status in {408, 429} or status >= 500:
            return TransientNodeError(
                reason,
                retry_after_seconds=parse_retry_after(dict(exc.response.headers.items())),
                node_id=ctx.node_id,
                node_type=ctx.node_type,
                details=details,
            )
        if status in (401, 403):
            reason += " (check the provider's API key)"
        return ctx.error(reason, details=details)
    return ctx.error(f"{where} failed: {exc}", details=details)


def _status_message(exc: "openai.APIStatusError") -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:500]
        if isinstance(inner, str):
            return inner[:500]
    return str(exc.message)[:500]


# -- llm -----------------------------------------------------------------------------------------


def execute_llm(ctx: NodeContext) -> NodeResult:
    config = ctx.typed_config(LLMConfig)
    endpoint = resolve_endpoint(ctx, config.provider, config.model)
    prompt = ctx.render_text(config.prompt) if config.prompt is not None else ""
    if not prompt.strip():
        raise ctx.error("the node has no prompt", NodeConfigurationError)
    messages = chat_messages(ctx, config.system_prompt, prompt)
    reply = chat(
        ctx, endpoint, messages, temperature=config.temperature, max_tokens=config.max_tokens
    )
    return NodeResult(wrap_output(reply.as_output(), config.output_variable))


# -- router --------------------------------------------------------------------------------------

ROUTER_INSTRUCTIONS = """\
You are a router in an automated workflow. Read the input and choose the one route that fits \
it best.

Routes (value: label - description):
{routes}

Answer with only a JSON object, no other text:
{{"route": "<one of: {values}>", "reason": "<one short sentence>"}}"""


def router_messages(
    routes: Sequence[Route], prompt: str, system_prompt: str | None
) -> list[dict[str, Any]]:
    lines = []
    for route in routes:
        line = f"- {route.value}"
        if route.label and route.label != route.value:
            line += f": {route.label}"
        if route.description:
            line += f" - {route.description}"
        lines.append(line)
    instructions = ROUTER_INSTRUCTIONS.format(
        routes="\n".join(lines), values=", ".join(r.value for r in routes)
    )
    system = f"{system_prompt.strip()}\n\n{instructions}" if system_prompt else instructions
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]


_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_OBJECT = re.compile(r"\{.*\}", re.DOTALL)
_STRIP = " \t\r\n\"'`*.,;:!?()[]<>"


def parse_route_answer(answer: str, routes: Sequence[Route]) -> tuple[int | None, str | None]:
    """(index of the chosen route or None, the model's reason) from a model's answer.

    Accepts the JSON object we ask for (also inside a code fence or other text), a bare route
    value or label, or text that names exactly one route; anything else is None.
    """
    text = _FENCE.sub("", answer.strip()).strip()
    candidate: str = text
    reason: str | None = None
    parsed: Any = None
    for source in (text, *(m.group(0) for m in [_OBJECT.search(text)] if m)):
        try:
            parsed = json.loads(source)
            break
        except ValueError:
            continue
    if isinstance(parsed, dict):
        for key in ("route", "value", "choice", "answer", "category"):
            if isinstance(parsed.get(key), str | int | float):
                candidate = str(parsed[key])
                break
        else:
            return None, None
        raw_reason = parsed.get("reason")
        reason = str(raw_reason) if raw_reason is not None else None
    elif isinstance(parsed, str | int | float) and not isinstance(parsed, bool):
        candidate = str(parsed)
    wanted = candidate.strip(_STRIP).lower()
    wanted = re.sub(r"^route\s*[:=]\s*", "", wanted).strip(_STRIP)
    for attribute in ("value", "label"):
        for index, route in enumerate(routes):
            name = getattr(route, attribute)
            if name and name.strip().lower() == wanted:
                return index, reason
    # Free text: take it only if it names exactly one route (by value or label).
    named = {
        index
        for index, route in enumerate(routes)
        for name in (route.value, route.label)
        if name and re.search(rf"(?<![\w-]){re.escape(name.strip().lower())}(?![\w-])", wanted)
    }
    if len(named) == 1:
        return named.pop(), reason
    return None, reason


def execute_router(ctx: NodeContext) -> NodeResult:
    config = ctx.typed_config(RouterConfig)
    if not config.routes:
        raise ctx.error("the router has no routes", NodeConfigurationError)
    endpoint = resolve_endpoint(ctx, config.provider, config.model)
    if config.prompt is not None and str(config.prompt).strip():
        prompt = ctx.render_text(config.prompt)
    else:  # no prompt: classify what the node before it produced
        upstream = ctx.upstream_value()
        if upstream is None:
            raise ctx.error(
                "the router has no prompt and no upstream output", NodeConfigurationError
            )
        prompt = upstream if isinstance(upstream, str) else json.dumps(upstream, default=str)
    system = ctx.render_text(config.system_prompt) if config.system_prompt else None
    reply = chat(
        ctx,
        endpoint,
        router_messages(config.routes, prompt, system),
        temperature=config.temperature if config.temperature is not None else ROUTER_TEMPERATURE,
        max_tokens=config.max_tokens,
    )
    index, reason = parse_route_answer(reply.text, config.routes)
    used_default = index is None
    branches: set[str]
    if index is not None:
        route: str | None = config.routes[index].value
        label = config.routes[index].label or route
        branches = {f"route-{index}"}
    elif config.default_route is not None:
        route, label = config.default_route, None
        branches = {"default"}
        for position, candidate in enumerate(config.routes):
            if candidate.value.strip().lower() == config.default_route.strip().lower():
                branches.add(f"route-{position}")
                label = candidate.label or candidate.value
                break
        ctx.log.warning(
            f"{ctx.node_id}: the model's answer names no route; taking defaultRoute "
            f"'{config.default_route}' (answer: {reply.text[:200]!r})"
        )
    else:
        raise ctx.error(
            f"the model's answer names none of the routes "
            f"({', '.join(r.value for r in config.routes)}) and there is no defaultRoute: "
            f"{reply.text[:300]!r}",
            details={
                "answer": reply.text[:1000],
                "provider": endpoint.provider_name,
                "model": endpoint.model,
            },
        )
    output: dict[str, Any] = {
        "route": route,
        "label": label,
        "reason": reason,
        "text": reply.text,
        "usedDefault": used_default,
        "usage": reply.usage,
        "model": reply.model,
        "provider": reply.provider,
    }
    if config.output_variable:
        output[config.output_variable] = route
    return NodeResult(output, branches=frozenset(branches))


# -- vision and embeddings -------------------------------------------------------------------------

_IMAGE_KEYS = ("imageInput", "image", "imageUrl", "imageURL", "images", "imageData", "url")
_BASE64_IMAGE_TYPES = {"/9j/": "image/jpeg", "iVBOR": "image/png", "R0lG": "image/gif"}


def _extra(config: MediaConfig, *names: str) -> Any:
    extras = config.extras()
    for name in names:
        if extras.get(name) is not None:
            return extras[name]
    return None


def image_urls(value: Any) -> list[str]:
    """Image references as the URLs a vision model takes: http(s) or data: URLs."""
    items = value if isinstance(value, list) else [value]
    urls: list[str] = []
    for item in items:
        found = item
        if isinstance(item, dict):
            found = next(
                (item[k] for k in ("url", "imageUrl", "data", "base64") if item.get(k)), None
            )
        if found is None or not str(found).strip():
            continue
        text = str(found).strip()
        if not text.startswith(("http://", "https://", "data:")):
            mime = next(
                (m for prefix, m in _BASE64_IMAGE_TYPES.items() if text.startswith(prefix)),
                "image/png",
            )
            text = f"data:{mime};base64,{text}"
        urls.append(text)
    return urls


def execute_vision(ctx: NodeContext) -> NodeResult:
    """A chat completion with the node's image(s) as `image_url` parts of the user message."""
    config = ctx.typed_config(MediaConfig)
    endpoint = resolve_endpoint(ctx, config.provider, config.model)
    urls = image_urls(ctx.render(_extra(config, *_IMAGE_KEYS)))
    if not urls:
        raise ctx.error(
            "the vision node has no image (imageInput: a URL, a data: URL or base64)",
            NodeConfigurationError,
        )
    prompt = ctx.render_text(_extra(config, "prompt") or "Describe this image.")
    detail = _extra(config, "detail")
    image_part: dict[str, Any]
    content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
    for url in urls:
        image_part = {"url": url}
        if detail:
            image_part["detail"] = str(detail)
        content.append({"type": "image_url", "image_url": image_part})
    messages = chat_messages(ctx, _extra(config, "systemPrompt", "system"), content)
    temperature = _extra(config, "temperature")
    max_tokens = _extra(config, "maxTokens", "max_tokens")
    reply = chat(
        ctx,
        endpoint,
        messages,
        temperature=float(temperature) if temperature is not None else None,
        max_tokens=int(max_tokens) if max_tokens is not None else None,
    )
    return NodeResult(wrap_output(reply.as_output(), config.output_variable))


def execute_embeddings(ctx: NodeContext) -> NodeResult:
    """OpenAI-compatible /embeddings of one text or a list of texts.

    Output `{embedding, embeddings, dimensions, usage, model, provider}`: `embedding` is the
    first vector, `embeddings` all of them in input order.
    """
    config = ctx.typed_config(MediaConfig)
    endpoint = resolve_endpoint(ctx, config.provider, config.model)
    raw = _extra(config, "input", "text", "texts", "content", "inputText", "query")
    value = ctx.render(raw) if raw is not None else ctx.upstream_value()
    texts = [to_text(v) for v in (value if isinstance(value, list) else [value]) if v is not None]
    if not texts or not any(t.strip() for t in texts):
        raise ctx.error("the embeddings node has no input text", NodeConfigurationError)
    options: dict[str, Any] = {}
    dimensions = _extra(config, "dimensions")
    if dimensions is not None:
        options["dimensions"] = int(dimensions)
    with provider_call(ctx, endpoint) as client:
        response = client.embeddings.create(model=endpoint.model, input=texts, **options)
    vectors = [list(item.embedding) for item in sorted(response.data, key=lambda d: d.index)]
    output = {
        "embedding": vectors[0] if vectors else [],
        "embeddings": vectors,
        "dimensions": len(vectors[0]) if vectors else 0,
        "usage": usage_of(response.usage),
        "model": response.model or endpoint.model,
        "provider": endpoint.provider_name,
    }
    return NodeResult(wrap_output(output, config.output_variable))


EXECUTORS: Mapping[str, Executor] = {
    "llm": execute_llm,
    "router": execute_router,
    "vision": execute_vision,
    "embeddings": execute_embeddings,
}
