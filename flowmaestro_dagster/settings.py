"""Typed settings from `FLOWMAESTRO_*` environment variables (and `.env`), read on demand.

Nested sections use `__`: `FLOWMAESTRO_LLM__PROVIDERS__OPENAI__BASE_URL=http://localhost:8000/v1`.
Dict-valued settings also take JSON: `FLOWMAESTRO_DATABASES='{"crm": "postgresql+psycopg2://..."}'`.
Secrets are `SecretStr` (never printed) or named environment variables (`*_env` fields).
"""

import os
import re
import secrets
import zoneinfo
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HOME = PROJECT_ROOT / "dagster_home"
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")  # as ExecutionCreate.queue
_PLACEHOLDERS = {"changeme", "change-me", "secret", "password", "xxx", "todo"}


class LLMProvider(BaseModel):
    """An OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, LM Studio, a gateway).

    `FLOWMAESTRO_LLM__PROVIDERS__<NAME>__BASE_URL`, `__API_KEY` or `__API_KEY_ENV` (the name of
    the variable that holds the key, so the key itself stays out of FlowMaestro's settings).
    """

    base_url: str | None = Field(
        default=None, description="OpenAI-compatible API root, e.g. http://localhost:11434/v1"
    )
    api_key: SecretStr | None = None
    api_key_env: str | None = Field(default=None, description="env var holding the API key")
    default_model: str | None = Field(
        default=None, description="model for nodes that name none (routers often do not)"
    )
    models: dict[str, str] = Field(
        default_factory=dict,
        description="model names in workflows → model names this endpoint serves",
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="extra request headers (gateways, org ids)"
    )
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = Field(
        default="max_tokens",
        description="request field for maxTokens (OpenAI reasoning models want the second)",
    )
    timeout_s: float = Field(default=60.0, gt=0)

    def resolved_api_key(self) -> str | None:
        """The key from `api_key`, else from the variable `api_key_env` names (read now)."""
        if self.api_key is not None and self.api_key.get_secret_value():
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return None

    def model_for(self, requested: str | None) -> str | None:
        """The model to ask for: the node's (through `models`), else `default_model`."""
        if requested:
            return self.models.get(requested, requested)
        return self.default_model


class LLMSettings(BaseModel):
    providers: dict[str, LLMProvider] = Field(default_factory=dict)
    default_provider: str = Field(
        default="openai", description="provider of nodes that name none (routers often do not)"
    )

    def provider(self, name: str) -> LLMProvider | None:
        """A provider by name: case-insensitive, `-` and `_` alike (env names cannot hold `-`)."""
        wanted = _provider_key(name)
        for key, provider in self.providers.items():
            if _provider_key(key) == wanted:
                return provider
        return None


def _provider_key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


class HttpSettings(BaseModel):
    """Outbound HTTP from nodes (http node, webhooks): the SSRF guard's allowances and limits.

    `allowed_hosts` entries are hostnames (`api.internal`), wildcards (`*.corp.internal`), IP
    addresses or CIDR networks (`10.1.0.0/16`); they open anything, even metadata addresses.
    """

    allow_loopback: bool = False
    allow_private: bool = Field(
        default=False, description="10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7"
    )
    allowed_hosts: list[str] = Field(default_factory=list)
    timeout_s: float = Field(default=30.0, gt=0, description="for nodes that set no timeout")
    max_timeout_s: float = Field(default=300.0, gt=0, description="cap on a node's timeout")
    max_response_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_redirects: int = Field(default=10, ge=0)


class CodeSettings(BaseModel):
    """Limits of the code node's sandboxes (docs/node-types.md, code; docs/sandbox.md).

    A node's `timeout` (ms) and `memory` (MB) are capped by `max_timeout_ms` / `max_memory_mb`.
    """

    max_timeout_ms: int = Field(default=60_000, gt=0)
    default_memory_mb: int = Field(default=128, gt=0)
    max_memory_mb: int = Field(default=512, gt=0)
    max_output_chars: int = Field(default=100_000, gt=0, description="stdout/stderr kept, each")
    max_result_chars: int = Field(default=10_000_000, gt=0, description="JSON of a value")
    python_enabled: bool = Field(default=True, description="run Python snippets at all")
    python_max_file_mb: int = Field(default=16, gt=0, description="largest file a snippet writes")
    python_max_files: int = Field(default=64, ge=0, description="files a snippet may create")
    python_max_processes: int = Field(
        default=16, ge=1, description="processes and threads a snippet has at once (RLIMIT_NPROC)"
    )
    python_bwrap: str = Field(
        default="bwrap",
        description="bubblewrap command or path for Python and JavaScript code nodes "
        "(docs/sandbox.md); empty: none",
    )
    python_uid_base: int = Field(
        default=0x70000000,
        ge=1,
        le=0xFFFFFFFE - (1 << 22),
        description="root workers: a snippet runs as this uid plus its sandbox's pid",
    )
    scratch_dir: Path | None = Field(
        default=None, description="where per-run scratch directories go (the system temp dir)"
    )


class FileSettings(BaseModel):
    """The file store (docs/nodes.md#files): where node files and uploads live, and their caps.

    `url` is a local directory or any fsspec URL (`s3://bucket/prefix`, `gcs://...`; install the
    fsspec backend, e.g. s3fs); empty means `<dagster_home>/files`.
    """

    url: str | None = Field(default=None, description="local path or fsspec URL of the store")
    max_file_mb: int = Field(default=100, gt=0, description="largest file a node writes or reads")
    max_upload_mb: int = Field(default=50, gt=0, description="largest file the API accepts")
    signed_url_ttl_s: int = Field(
        default=3600, gt=0, description="lifetime of a download URL (GET /files/download)"
    )
    max_signed_url_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)


def _check_database_url(url: str) -> str:
    scheme = url.split("://", 1)[0].lower()
    if scheme.startswith("postgres") and scheme != "postgresql+psycopg2":
        raise ValueError(
            f"PostgreSQL URLs must name the psycopg2 driver: postgresql+psycopg2://... "
            f"(got {scheme}://)"
        )
    if "://" not in url:
        raise ValueError("not a SQLAlchemy URL (dialect+driver://user:password@host/database)")
    return url


class DatabaseConnection(BaseModel):
    """A named database for database nodes: a SQLAlchemy URL, inline or from a variable.

    `FLOWMAESTRO_DATABASES='{"crm": "postgresql+psycopg2://app@db/crm"}'` (a bare URL is the
    `url`), or `FLOWMAESTRO_DATABASES__CRM__URL_ENV=CRM_DATABASE_URL` (the variable holding the
    URL), optionally with `password_env` (the variable holding the password). The URL is
    checked when a node uses it (a settings error would print it, password and all).
    """

    url: SecretStr | None = None
    url_env: str | None = Field(default=None, description="env var holding the URL")
    password_env: str | None = Field(default=None, description="env var holding the password")
    pool_size: int = Field(default=5, ge=1)
    max_overflow: int = Field(default=5, ge=0)
    max_rows: int = Field(default=10_000, ge=1, description="rows a node returns at most")
    read_only: bool = Field(
        default=False,
        description="refuse writes: SQLite opens the file mode=ro, PostgreSQL sessions default "
        "to READ ONLY transactions (a guard, not a privilege: see docs/node-types.md)",
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_url(cls, value: Any) -> Any:
        if isinstance(value, str | SecretStr):
            return {"url": value}
        return value

    def resolved_url(self) -> str:
        """The URL (read from the environment now); raises ValueError when there is none."""
        if self.url is not None:
            url = self.url.get_secret_value()
        elif self.url_env:
            url = os.environ.get(self.url_env, "")
            if not url:
                raise ValueError(f"the environment variable {self.url_env} is not set")
        else:
            raise ValueError("the connection has neither url nor url_env")
        return _check_database_url(url)

    def resolved_password(self) -> str | None:
        if self.password_env:
            return os.environ.get(self.password_env) or None
        return None


class ConnectionSettings(BaseModel):
    """A named connection for connectors: a Slack webhook, an SMTP server, a webhook endpoint.

    Secrets are `SecretStr` fields or the name of a variable that holds them (`<field>_env`):
    `FLOWMAESTRO_CONNECTIONS__SLACK__URL_ENV=SLACK_WEBHOOK_URL`. A node picks a connection by
    `connectionId`, else the one named like its provider; `connector` says which connector
    serves it when that is not the provider (a `gmail` connection served by `smtp`). Extra keys
    are kept for connectors a deployment adds: `secret("api_key")` reads `api_key`/`api_key_env`.

    `base_url` is where the connection's secrets may go when the URL comes from a node (workflow
    authors are not trusted with them): same scheme, host and port, and a path under its path.
    Without it a node-supplied URL gets none of the connection's secrets.
    """

    model_config = ConfigDict(extra="allow")

    connector: str | None = Field(default=None, description="connector serving this connection")
    url: SecretStr | None = Field(default=None, description="webhook URL (Slack, a webhook)")
    url_env: str | None = None
    base_url: str | None = Field(
        default=None,
        description="the only URLs a node may send this connection's secrets to (not a secret)",
    )
    host: str | None = Field(default=None, description="SMTP host")
    port: int | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_env: str | None = None
    security: Literal["starttls", "ssl", "none"] = Field(
        default="starttls", description="SMTP: STARTTLS on the plain port, implicit TLS, or none"
    )
    from_address: str | None = Field(default=None, description="SMTP: default sender")
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="webhook: headers sent with every request"
    )
    signing_secret: SecretStr | None = None
    signing_secret_env: str | None = None
    timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _absolute_base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an absolute http(s) URL: https://api.example.com/v1")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("base_url takes no credentials, query or fragment")
        return value.strip()

    def secret(self, name: str) -> str | None:
        """A secret from field `name`, else from the variable named by `<name>_env`."""
        value = getattr(self, name, None)
        if value is None and self.model_extra:
            value = self.model_extra.get(name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value:
            return str(value)
        variable = getattr(self, f"{name}_env", None)
        if variable is None and self.model_extra:
            variable = self.model_extra.get(f"{name}_env")
        if variable:
            return os.environ.get(str(variable)) or None
        return None


class OAuthClientSettings(BaseModel):
    """An OAuth2 client registered with a provider, for connections made by authorization
    (`POST /connections/oauth/{provider}/authorize`): `FLOWMAESTRO_OAUTH__<PROVIDER>__CLIENT_ID`
    and `__CLIENT_SECRET` (or `__CLIENT_SECRET_ENV`). The endpoints and scopes come from the
    provider's catalogue entry; the `*_url` and `scopes` fields override them (a proxy, a
    provider's regional endpoint, a local fake in tests). Its redirect URI is
    `FLOWMAESTRO_PUBLIC_API_URL` + `/connections/oauth/callback`.
    """

    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_env: str | None = Field(default=None, description="env var holding it")
    authorize_url: str | None = Field(default=None, description="overrides the catalogue's")
    token_url: str | None = Field(default=None, description="overrides the catalogue's")
    revoke_url: str | None = Field(default=None, description="overrides the catalogue's")
    scopes: list[str] | None = Field(default=None, description="overrides the catalogue's")
    token_auth: Literal["basic", "post"] | None = Field(
        default=None,
        description="how the client authenticates at the token endpoint: HTTP Basic or "
        "client_id/client_secret in the form (default: the catalogue's, else Basic)",
    )
    pkce: bool | None = Field(
        default=None,
        description="send a PKCE S256 challenge (default: the catalogue's, else on)",
    )

    def resolved_client_secret(self) -> str | None:
        if self.client_secret is not None and self.client_secret.get_secret_value():
            return self.client_secret.get_secret_value()
        if self.client_secret_env:
            return os.environ.get(self.client_secret_env) or None
        return None


class KnowledgeSettings(BaseModel):
    """Knowledge bases (docs/nodes.md#knowledgebasequery): how documents are chunked, their caps,
    and the optional embeddings endpoint that turns full-text search into hybrid search.

    `embeddings_provider` names one of `FLOWMAESTRO_LLM__PROVIDERS__<NAME>`; unset, search is
    full-text only (SQLite FTS5 / PostgreSQL tsvector) and needs no model.
    """

    chunk_chars: int = Field(default=800, ge=100, le=20_000, description="largest chunk")
    chunk_overlap_chars: int = Field(
        default=100, ge=0, description="text a chunk repeats from the one before it"
    )
    max_document_bytes: int = Field(
        default=10 * 1024 * 1024, gt=0, description="largest PDF upload or fetched page"
    )
    max_document_chars: int = Field(
        default=1_000_000, gt=0, description="most text one document may hold once extracted"
    )
    max_chunks_per_document: int = Field(default=2_000, gt=0)
    max_documents_per_knowledge_base: int = Field(default=1_000, gt=0)
    max_pdf_pages: int = Field(default=500, gt=0, description="pages of a PDF read at most")
    extract_timeout_s: float = Field(
        default=60.0, gt=0, description="time to fetch a URL or read a PDF's text, in all"
    )
    embeddings_provider: str | None = Field(
        default=None, description="LLM provider serving /embeddings; unset: full-text only"
    )
    embeddings_model: str | None = Field(
        default=None, description="embeddings model (default: the provider's default_model)"
    )
    embeddings_batch_size: int = Field(default=64, ge=1, le=2048, description="texts a request")
    rrf_k: int = Field(default=60, ge=1, description="reciprocal-rank fusion constant (hybrid)")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> "KnowledgeSettings":
        if self.chunk_overlap_chars >= self.chunk_chars:
            raise ValueError("chunk_overlap_chars must be smaller than chunk_chars")
        return self


class SheetSettings(BaseModel):
    """Caps of spreadsheetGeneration (docs/nodes.md#spreadsheetgeneration): a sheet larger than
    these is refused with a node error naming the data field, never cut short silently."""

    max_rows: int = Field(default=100_000, ge=1, le=1_048_575, description="data rows a sheet")
    max_columns: int = Field(default=1_000, ge=1, le=16_384, description="columns a sheet")
    max_cell_chars: int = Field(
        default=32_767, ge=1, le=32_767, description="characters a cell (Excel's own limit)"
    )


class ChartSettings(BaseModel):
    """Caps of chartGeneration (docs/nodes.md#chartgeneration); width and height are checked
    against fixed bounds (50 to 4,000 px) at deploy time."""

    max_points: int = Field(
        default=10_000, ge=1, le=1_000_000, description="data points a chart (its spec keeps them)"
    )


class WebSearchSettings(BaseModel):
    """webSearch nodes (docs/nodes.md#websearch): which provider serves a node that names none,
    and how many results a node gets. A provider's key and API root are a connection:
    `FLOWMAESTRO_CONNECTIONS__BRAVE__API_KEY`, `FLOWMAESTRO_CONNECTIONS__SEARXNG__BASE_URL`.
    """

    provider: str | None = Field(
        default=None,
        description="connection (or adapter: searxng, brave, tavily, serper) for nodes that "
        "name no provider",
    )
    default_results: int = Field(default=5, ge=1, le=100, description="when maxResults is unset")
    max_results: int = Field(default=20, ge=1, le=100, description="cap on a node's maxResults")


class BrowserSettings(BaseModel):
    """screenshotCapture (docs/nodes.md#screenshotcapture): the Chromium that Playwright drives
    (Debian's; Playwright's own browser download is never used) and its budgets."""

    executable: str = Field(default="chromium", description="a path, or a name looked up on PATH")
    timeout_s: float = Field(default=30.0, gt=0, description="a capture's whole time budget")
    max_timeout_s: float = Field(default=120.0, gt=0, description="cap on a node's timeout")
    max_requests: int = Field(default=300, ge=1, description="requests a page may make")
    max_page_bytes: int = Field(
        default=50 * 1024 * 1024, gt=0, description="bytes a page may load, in all"
    )
    max_height: int = Field(default=16_384, ge=240, description="pixels of a full-page capture")


class DocumentSettings(BaseModel):
    """pdfGeneration, pdfExtract and ocrExtraction (docs/nodes.md#pdfgeneration): the operator's
    PDF templates and the caps every document input has (text, pages, pixels, time)."""

    templates_dir: Path | None = Field(
        default=None,
        description="folder of Jinja2 PDF templates (<name>.html) that add to or replace the "
        "shipped ones",
    )
    max_content_chars: int = Field(
        default=1_000_000,
        gt=0,
        description="characters a PDF is made from, or text pdfExtract/ocrExtraction return",
    )
    max_pdf_pages: int = Field(
        default=500, gt=0, description="pages a generated PDF may have, or pdfExtract reads"
    )
    extract_timeout_s: float = Field(
        default=120.0, gt=0, description="time pdfExtract spends reading text, in all"
    )
    ocr_dpi: int = Field(default=300, ge=72, le=600, description="scanned PDF pages for OCR")
    ocr_max_pages: int = Field(default=20, gt=0, description="pages (or frames) one OCR reads")
    ocr_timeout_s: float = Field(default=60.0, gt=0, description="Tesseract's time for a page")
    max_image_pixels: int = Field(
        default=50_000_000, gt=0, description="pixels of an image (or rendered page) for OCR"
    )


class MediaAISettings(BaseModel):
    """Generative media nodes (docs/nodes.md#audiotranscription): audioTranscription, audioOutput
    / audio, imageGeneration and videoGeneration on OpenAI-compatible providers. Inputs over a
    cap are refused with a node error naming the field, never cut short; a video job is polled
    from a durable waitpoint (no worker waits while it renders) with these intervals."""

    max_transcription_mb: int = Field(
        default=25, gt=0, description="largest audio file a transcription uploads (OpenAI: 25)"
    )
    max_speech_chars: int = Field(
        default=4096, gt=0, description="characters one text-to-speech call reads (OpenAI: 4096)"
    )
    max_image_mb: int = Field(
        default=25, gt=0, description="largest image uploaded (edits) or generated image stored"
    )
    max_video_mb: int = Field(default=500, gt=0, description="largest generated video stored")
    video_poll_initial_s: float = Field(
        default=5.0, gt=0, description="first wait between a video job's submit and its poll"
    )
    video_poll_factor: float = Field(default=2.0, ge=1, description="each next wait: times this")
    video_poll_max_s: float = Field(default=60.0, gt=0, description="longest wait between polls")
    video_deadline_s: float = Field(
        default=3600.0, gt=0, description="a video job not done this long after submit fails"
    )
    video_local_wait_s: float = Field(
        default=120.0,
        gt=0,
        description="runs outside the platform (no waitpoints) poll in process this long at most",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLOWMAESTRO_",
        env_file=".env",
        env_nested_delimiter="__",
        extra="ignore",
        frozen=True,
    )

    workflows_dir: Path = Field(
        default=PROJECT_ROOT / "workflows",
        description="Folder of workflow JSON files loaded into the code location as jobs.",
    )
    dagster_home: Path = Field(
        default=PROJECT_ROOT / "dagster_home",
        description="DAGSTER_HOME used by `flowmaestro dev` and `flowmaestro run`.",
    )
    webserver_host: str = "127.0.0.1"
    webserver_port: int = 3000

    llm: LLMSettings = Field(default_factory=LLMSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    code: CodeSettings = Field(default_factory=CodeSettings)
    files: FileSettings = Field(default_factory=FileSettings)
    python_isolation: Literal["auto", "none"] = Field(
        default="auto",
        description="Python and JavaScript code nodes: 'auto' runs them in every isolation "
        "layer the host has and refuses them where files, network or processes would be "
        "unguarded; 'none' runs them with resource limits only, with a warning "
        "(docs/sandbox.md)",
    )
    databases: dict[str, DatabaseConnection] = Field(
        default_factory=dict, description="named SQLAlchemy URLs for database nodes"
    )
    connections: dict[str, ConnectionSettings] = Field(
        default_factory=dict, description="named connector connections (Slack, SMTP, ...)"
    )
    # Connections store (docs/security.md#connections): users' connections live encrypted in
    # the platform database; `connections` above stays the operators' bootstrap source.
    connections_keys: SecretStr | None = Field(
        default=None,
        description="comma-separated Fernet keys: the first encrypts connection secrets, every "
        "one decrypts (key rotation); unset: one generated once in DAGSTER_HOME (development)",
    )
    oauth: dict[str, OAuthClientSettings] = Field(
        default_factory=dict, description="OAuth2 clients per provider (connections by consent)"
    )
    knowledge: KnowledgeSettings = Field(
        default_factory=KnowledgeSettings, description="knowledge bases: chunking, caps, embeddings"
    )
    web_search: WebSearchSettings = Field(
        default_factory=WebSearchSettings, description="webSearch: default provider, result caps"
    )
    browser: BrowserSettings = Field(
        default_factory=BrowserSettings, description="screenshotCapture: Chromium and budgets"
    )
    sheets: SheetSettings = Field(
        default_factory=SheetSettings, description="spreadsheetGeneration caps"
    )
    charts: ChartSettings = Field(default_factory=ChartSettings, description="chartGeneration caps")
    documents: DocumentSettings = Field(
        default_factory=DocumentSettings, description="pdfGeneration, pdfExtract, ocrExtraction"
    )
    media_ai: MediaAISettings = Field(
        default_factory=MediaAISettings,
        description="audioTranscription, audioOutput, imageGeneration, videoGeneration caps",
    )

    # -- the platform: database, Dagster, waitpoints, run queue, scale-out ------------------------
    database_url: str = Field(
        default=f"sqlite:///{DEFAULT_HOME / 'flowmaestro.db'}",
        description="The platform database (workflows, executions, node outputs, waitpoints).",
    )
    dagster_graphql_url: str = "http://127.0.0.1:3000/graphql"
    dagster_ui_url: str = "http://127.0.0.1:3000"
    code_location_shards: int = Field(
        default=32,
        ge=1,
        le=256,
        description="code locations the deployed workflows are spread over (a deploy reloads one; "
        "the webserver fetches every job of that location again): ~300 jobs each at 10,000 "
        "workflows; each location costs ~0.6% of a core, the webserver and daemon polling it",
    )
    code_server: Literal["shared", "per_location"] = Field(
        default="shared",
        description="'shared': one `flowmaestro code-server` process serves every shard location "
        "and reloads a location in process (docs/deployment.md); 'per_location': `dagster dev` "
        "starts a code server per location and restarts it on each reload",
    )
    idempotency_ttl_seconds: int = Field(default=86_400, ge=60)
    launch_lease_seconds: int = Field(default=60, ge=5)
    launch_max_attempts: int = Field(
        default=8,
        ge=1,
        le=100,
        description="launches of one execution before the reconciler gives up and marks it "
        "failed; retries back off (next tick, then 30 s doubling to 15 min: ~30 min at 8)",
    )
    launch_on_submit: bool = Field(
        default=True,
        description="launch right after the submission commits; off: the reconciler launches",
    )
    reconcile_after_seconds: float = Field(default=10.0, ge=0)
    reconciler_interval_seconds: int = Field(default=10, ge=1)
    schedule_timezone: str = Field(
        default="UTC",
        description="timezone of schedule triggers that name none (an IANA name)",
    )
    schedule_missed_grace_seconds: int = Field(
        default=120,
        ge=10,
        description="a schedule tick evaluated later than this after its slot was missed "
        "(downtime): workflows with missedTicks=skip skip it",
    )
    graphql_timeout_seconds: float = Field(default=30.0, gt=0)
    public_api_url: str = Field(
        default="http://127.0.0.1:8000", description="how approvers and callers reach the API"
    )
    secret_key: SecretStr | None = Field(
        default=None, description="signs approval links and callback URLs (a file in dev)"
    )
    callback_signing_secret: SecretStr | None = Field(
        default=None, description="HMAC secret callers sign callback bodies with (a file in dev)"
    )
    callback_tolerance_seconds: int = Field(default=300, ge=10)
    hook_max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="largest webhook delivery body (docs/webhooks.md)"
    )
    wait_sleep_threshold_seconds: float = Field(default=30.0, ge=0)
    waitpoint_interval_seconds: int = Field(default=5, ge=1)
    alert_interval_seconds: int = Field(
        default=30, ge=1, description="how often the alert sensor evaluates the alert rules"
    )
    # Traces out (docs/observability.md#traces): off by default; the OTLP endpoint, protocol
    # and headers are the standard OTEL_EXPORTER_OTLP_* variables, read by the exporter.
    otel_enabled: bool = Field(
        default=False, description="export each finished execution as an OpenTelemetry trace"
    )
    otel_export_interval_seconds: int = Field(default=10, ge=1)
    # Run history retention (docs/operations.md): both rules off by default; either one set
    # deletes finished executions with their Dagster runs, event logs and platform rows.
    retention_days: int | None = Field(
        default=None,
        ge=1,
        description="delete finished executions that finished more than this many days ago",
    )
    retention_keep_per_workflow: int | None = Field(
        default=None,
        ge=1,
        description="delete finished executions beyond the newest N of each workflow",
    )
    retention_batch_size: int = Field(
        default=100, ge=1, le=10_000, description="executions the retention sensor deletes a tick"
    )
    retention_interval_seconds: int = Field(default=60, ge=1)

    # -- what one definition may ask (docs/security.md): checked in workers and the API ---------
    expression_max_steps: int = Field(
        default=200_000,
        ge=1_000,
        description="work one expression or template may do: a step per operation or call, "
        "per 10 elements a built-in walks, per 1,000 characters it copies",
    )
    expression_max_size: int = Field(
        default=10_000_000,
        ge=10_000,
        description="largest value an expression or template builds: characters of a string, "
        "elements of a list/object with everything nested in it",
    )
    max_nodes: int = Field(
        default=1_000, ge=1, description="nodes a workflow may have (validation refuses more)"
    )
    unresolved_references: Literal["warn", "error"] = Field(
        default="warn",
        description="a `{{reference}}` nothing provides at run time: a warning on the node "
        "(the text stays as written) or the node's failure; a workflow's "
        "settings.unresolvedReferences overrides it",
    )
    max_edges: int = Field(
        default=5_000, ge=0, description="edges a workflow may have (validation refuses more)"
    )

    # -- run queue: rendered into dagster.yaml (orchestration/instance_config.py) ----------------
    max_concurrent_runs: int = Field(
        default=10, ge=-1, description="runs in progress at once on the instance (-1: no limit)"
    )
    user_run_limit: int | None = Field(
        default=3,
        ge=1,
        description="runs in progress at once per user (None: no per-user limit); keeps one "
        "user's backlog from holding everyone else's runs",
    )
    queue_limits: dict[str, int] = Field(
        default_factory=lambda: {"ai-workflows": 3, "data-processing": 5},
        description="named queues and the runs each may have in progress ('default' is the "
        "queue of executions that name none; 0 pauses a queue)",
    )
    dequeue_interval_seconds: float = Field(
        default=0.5,
        ge=0.5,
        description="seconds between the daemon's passes over the run queue (0.5 at least: "
        "the daemon waits in half-second steps)",
    )
    dequeue_use_threads: bool = Field(
        default=False, description="launch dequeued runs from a thread pool (faster bursts)"
    )
    dequeue_num_workers: int | None = Field(default=None, ge=1)
    pool_granularity: Literal["run", "op"] = Field(
        default="run",
        description="'run': a workflow's concurrency limit counts runs (what the builder's "
        "slider means); 'op': it counts ops of any run, runs of the workflow interleave",
    )
    run_launcher: Literal["forkserver", "default"] = Field(
        default="forkserver",
        description="'forkserver': run workers forked warm from a preloaded server (single "
        "host, ~2 s faster per run); 'default': Dagster's launcher (a fresh process per run)",
    )
    run_keep_connections: bool = Field(
        default=True,
        description="forkserver run workers keep their PostgreSQL storage connections open for "
        "the run (2 per running run, on top of the platform's 1; a small run ~0.5 s faster): "
        "turn off for hundreds of concurrent runs without a connection pooler",
    )
    run_retries: int = Field(
        default=1, ge=0, le=10, description="re-executions of a run whose worker died"
    )
    run_max_runtime_seconds: int = Field(
        default=86_400, ge=0, description="runs still going after this are failed (0: never)"
    )
    run_console_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] | None = Field(
        default=None,
        description="what a run worker prints to its terminal (unset: Dagster's default, every "
        "event); the event log in the Dagster UI keeps every event whatever this says",
    )

    # -- scale-out (docs/deployment.md) ----------------------------------------------------------
    dagster_schema: str = Field(
        default="dagster",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="with a PostgreSQL database_url: the schema holding the Dagster instance "
        "storage (the platform's tables stay in the URL's default schema)",
    )
    celery_broker_url: str | None = Field(
        default=None,
        description="Redis URL of the Celery broker (redis://host:6379/0); set, node steps "
        "routed to Celery run on `flowmaestro worker` processes. Unset: every step runs on "
        "the run's threads",
    )
    celery_backend_url: str | None = Field(
        default=None, description="Celery result backend (default: the broker URL)"
    )
    celery_queue: str = Field(
        default="flowmaestro",
        pattern=r"^[A-Za-z0-9_.-]{1,100}$",
        description="the Celery queue node steps are sent to and workers consume",
    )
    celery_node_types: list[str] = Field(
        default_factory=lambda: ["code", "llm"],
        description="node types sent to Celery when neither the node nor the workflow says "
        "`runOn` (canonical type names, docs/node-types.md)",
    )
    celery_check_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="how often a run checks that the worker running its step is alive (and, "
        "while it waits in the queue, that some worker consumes the queue)",
    )

    @field_validator("celery_broker_url", "celery_backend_url", mode="before")
    @classmethod
    def _redis_only(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        # Celery's default transport is AMQP: a URL that is not Redis would hang runs.
        if isinstance(value, str) and not value.startswith(("redis://", "rediss://")):
            raise ValueError("a Celery broker/backend must be a redis:// or rediss:// URL")
        return value

    @field_validator("python_isolation", mode="before")
    @classmethod
    def _isolation_name(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("run_console_log_level", mode="before")
    @classmethod
    def _level_name(cls, value: object) -> object:
        if isinstance(value, str):
            return value.strip().upper() or None
        return value

    @field_validator("user_run_limit", "dequeue_num_workers", mode="before")
    @classmethod
    def _none_from_env(cls, value: object) -> object:
        # An environment variable cannot be None: an empty value or `none` means unset.
        if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
            return None
        return value

    @field_validator("schedule_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        # A typo would otherwise surface only when a shard defines its first schedule.
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r} (an IANA name such as UTC)") from exc
        return value

    @field_validator("queue_limits")
    @classmethod
    def _queue_names(cls, value: dict[str, int]) -> dict[str, int]:
        for name, limit in value.items():
            if not QUEUE_NAME.fullmatch(name):
                raise ValueError(f"queue name {name!r} must match {QUEUE_NAME.pattern}")
            if limit < 0:
                raise ValueError(f"queue {name!r}: the limit must be 0 or more")
        return value

    @model_validator(mode="after")
    def _fair_user_limit(self) -> "Settings":
        # A user allowed every slot could keep all other users waiting behind their backlog.
        if (
            self.user_run_limit is not None
            and self.max_concurrent_runs != -1
            and self.user_run_limit >= self.max_concurrent_runs
            and self.max_concurrent_runs > 1
        ):
            raise ValueError(
                "user_run_limit must be lower than max_concurrent_runs, or one user can take "
                "every slot and keep the others waiting"
            )
        return self

    @field_validator("database_url")
    @classmethod
    def _explicit_driver(cls, value: str) -> str:
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which is not installed.
        if value.startswith(("postgresql://", "postgres://")):
            return "postgresql+psycopg2://" + value.split("://", 1)[1]
        return value

    @field_validator("secret_key", "callback_signing_secret")
    @classmethod
    def _real_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().lower() in _PLACEHOLDERS:
            raise ValueError("set a real secret, not a placeholder")
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("secrets must be at least 16 characters")
        return value

    def secret(self, name: str) -> str:
        """A configured secret, else one generated once and kept in DAGSTER_HOME (development)."""
        value: SecretStr | None = getattr(self, name)
        if value is not None:
            return value.get_secret_value()
        home = Path(os.environ.get("DAGSTER_HOME") or DEFAULT_HOME)
        path = home / f".{name.replace('_', '-')}"
        if not path.exists():
            home.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()

    @property
    def postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    @property
    def celery_enabled(self) -> bool:
        return self.celery_broker_url is not None

    @property
    def celery_backend(self) -> str | None:
        return self.celery_backend_url or self.celery_broker_url

    @property
    def database_path(self) -> Path | None:
        if self.database_url.startswith("sqlite:///"):
            return Path(self.database_url.removeprefix("sqlite:///"))
        return None


@lru_cache
def get_settings() -> Settings:
    return Settings()
