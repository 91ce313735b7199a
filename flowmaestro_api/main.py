"""`create_app()`: the only place the API is wired."""

import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from anyio import CapacityLimiter, to_thread
from fastapi import FastAPI

from flowmaestro_api.errors import register_error_handlers
from flowmaestro_api.ratelimit import HookRateLimiter
from flowmaestro_api.request_guard import RequestBodyGuard
from flowmaestro_api.routes import alerts, approvals, executions, health, hooks, queues, workflows
from flowmaestro_api.routes.connections import router as connections_router
from flowmaestro_api.routes.files import UPLOAD_PATH, upload_body_limit
from flowmaestro_api.routes.files import router as files_router
from flowmaestro_api.routes.knowledge_bases import router as knowledge_bases_router
from flowmaestro_api.routes.observability import router as observability_router
from flowmaestro_api.security import KeyCache
from flowmaestro_api.services.events import EventFeed
from flowmaestro_api.services.metrics import metrics_registry
from flowmaestro_api.settings import ApiSettings, get_api_settings
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.control.executions import launch_execution
from flowmaestro_dagster.store.db import get_engine, migrate, session_factory, session_scope

log = logging.getLogger("flowmaestro.api")
LAUNCH_THREADS = 4  # launches after the response (launch_on_submit), each a Dagster round trip


def create_app(
    settings: ApiSettings | None = None, *, dagster: DagsterClient | None = None
) -> FastAPI:
    settings = settings or get_api_settings()
    migrate(settings.database_url)
    # Connections for every thread that may hold one at once: requests, launches, and the
    # event feed's and metrics' own.
    engine = get_engine(settings.database_url, pool_size=settings.api_threads + LAUNCH_THREADS + 2)
    client = dagster or DagsterClient(
        settings.dagster_graphql_url, timeout=settings.graphql_timeout_seconds, long_lived=True
    )
    launcher = ThreadPoolExecutor(max_workers=LAUNCH_THREADS, thread_name_prefix="launch")

    def launch(execution_id: str) -> None:
        try:
            with session_scope(engine) as session:
                launch_execution(
                    session, client, execution_id, lease_seconds=settings.launch_lease_seconds
                )
        except Exception as exc:  # noqa: BLE001 - the reconciler launches it later
            log.warning("launch of execution %s deferred: %s", execution_id, exc)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Sync routes run on anyio's default limiter (40 threads): few threads serve more
        # (bench/webhooks.py at 200 deliveries/s: 4.5 ms of CPU per delivery with 8 threads,
        # 7.3 ms with 40, the rest spent contending for the interpreter lock).
        to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        yield
        launcher.shutdown(wait=True)

    app = FastAPI(
        title="FlowMaestro API",
        version="1.0.0",
        description=(
            "Store FlowMaestro workflows and their versions, deploy them as Dagster jobs, and "
            "start executions idempotently. Errors are RFC 9457 problem+json documents."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessions = session_factory(engine)
    app.state.api_keys = KeyCache(settings.api_key_cache_seconds)
    app.state.dagster = client
    app.state.launcher = launcher
    app.state.launch = launch
    app.state.dagster_limiter = CapacityLimiter(settings.api_dagster_threads)
    app.state.events = EventFeed(
        client,
        app.state.sessions,
        approval_url=lambda waitpoint_id: (
            f"{settings.public_api_url.rstrip('/')}/approvals/{waitpoint_id}"
        ),
    )
    app.state.metrics_registry = metrics_registry(
        sessions=app.state.sessions, client=client, feed=app.state.events
    )
    app.state.hook_limits = HookRateLimiter(
        settings.hook_rate_limit, settings.hook_rate_limit_storage
    )
    app.add_middleware(
        RequestBodyGuard,
        limit=settings.max_request_bytes,
        # file uploads stream to the file store, capped by FLOWMAESTRO_FILES__MAX_UPLOAD_MB
        larger=[("POST", UPLOAD_PATH, upload_body_limit(settings))],
    )
    register_error_handlers(app)
    app.include_router(health.router)
    app.include_router(workflows.router)
    app.include_router(executions.router)
    app.include_router(queues.router)
    app.include_router(approvals.router)
    app.include_router(hooks.router)
    app.include_router(observability_router)
    app.include_router(alerts.router)
    app.include_router(connections_router)
    app.include_router(knowledge_bases_router)
    app.include_router(files_router)
    return app
