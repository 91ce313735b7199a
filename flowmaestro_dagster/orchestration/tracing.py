"""The trace export sensor: each finished execution as one OpenTelemetry trace over OTLP
(`control/traces.py`, docs/observability.md#traces). Off unless FLOWMAESTRO_OTEL_ENABLED."""

from datetime import datetime

from dagster import (
    DefaultSensorStatus,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from flowmaestro_dagster.control.traces import ExporterFactory, export_finished, otlp_exporter
from flowmaestro_dagster.orchestration.sensors import ClientFactory, for_tick
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import utcnow


def make_trace_export_sensor(
    minimum_interval_seconds: int = 10,
    *,
    settings: Settings | None = None,
    client_factory: ClientFactory | None = None,
    exporter_factory: ExporterFactory | None = None,
) -> SensorDefinition:
    """Exports the traces of executions that finished since its cursor (their finish time;
    the first tick starts from then, so enabling it does not send the whole history). The
    exporter is the OTLP one the `OTEL_EXPORTER_OTLP_*` variables describe, one per tick."""

    @sensor(
        name="execution_trace_exporter",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Exports finished executions as OpenTelemetry traces (OTLP).",
    )
    def export_traces(context: SensorEvaluationContext) -> SkipReason:
        current, client = for_tick(settings, client_factory, context.instance)
        if not current.otel_enabled:
            return SkipReason("trace export is off (FLOWMAESTRO_OTEL_ENABLED)")
        after = datetime.fromisoformat(context.cursor) if context.cursor else utcnow()
        exporter = (exporter_factory or otlp_exporter)()
        try:
            with session_scope(get_engine(current.database_url)) as session:
                result = export_finished(session, client, exporter, after=after)
        finally:
            exporter.shutdown()
        if result.watermark is not None:
            context.update_cursor(result.watermark.isoformat())
        failed = f"; {result.failed} failed (retried next tick)" if result.failed else ""
        return SkipReason(f"exported {result.exported} executions, {result.spans} spans{failed}")

    return export_traces
