"""code executors (issue #3)."""

from collections.abc import Mapping

from flowmaestro_dagster.executors.base import Executor

EXECUTORS: Mapping[str, Executor] = {}
