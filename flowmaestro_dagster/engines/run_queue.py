"""Dagster's QueuedRunCoordinator with a dequeue interval under one second.

Dagster's coordinator takes `dequeue_interval_seconds` as a whole number, 1 at least, and its
daemon then waits in half-second steps after each pass: a run submitted at a random moment
waits ~0.75 s on average before the daemon even looks at it, most of a small workflow's
submit → first node time. The daemon itself accepts any number (it only compares elapsed
time), so this subclass changes nothing but the field's type: `dequeue_interval_seconds: 0.5`
gives a pass every ~0.5 s (the daemon's waits are half-second steps, so 0.5 is the floor).
Queueing, limits, priorities and the daemon are Dagster's own.

Configure in dagster.yaml (the run limits stay under `concurrency: runs:`):

    run_coordinator:
      module: flowmaestro_dagster.engines.run_queue
      class: SubsecondRunCoordinator
      config:
        dequeue_interval_seconds: 0.5
"""

from collections.abc import Mapping
from typing import Any, Self, cast

from dagster import Field, QueuedRunCoordinator

from flowmaestro_dagster.dagster_internals import ConfigurableClassData

MIN_INTERVAL_SECONDS = 0.5  # the daemon's own wait step: a shorter interval changes nothing


class SubsecondRunCoordinator(QueuedRunCoordinator):
    """A QueuedRunCoordinator whose dequeue interval may be a fraction of a second."""

    def __init__(self, dequeue_interval_seconds: float | None = None, **kwargs: Any) -> None:
        interval = 1.0 if dequeue_interval_seconds is None else float(dequeue_interval_seconds)
        if interval < MIN_INTERVAL_SECONDS:
            raise ValueError(
                f"dequeue_interval_seconds must be at least {MIN_INTERVAL_SECONDS}, "
                f"got {dequeue_interval_seconds}"
            )
        super().__init__(dequeue_interval_seconds=max(1, round(interval)), **kwargs)
        self._interval = interval

    @property
    def dequeue_interval_seconds(self) -> float:  # type: ignore[override]
        return self._interval

    @classmethod
    def config_type(cls) -> Mapping[str, Any]:
        fields = dict(cast(Mapping[str, Any], super().config_type()))
        fields["dequeue_interval_seconds"] = Field(
            float,
            is_required=False,
            description="Seconds between the daemon's passes over the run queue (at least "
            f"{MIN_INTERVAL_SECONDS}; fractions allowed).",
        )
        return fields

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> Self:
        return cls(inst_data=inst_data, **config_value)
