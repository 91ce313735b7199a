"""Engines: how a compiled workflow's steps run (threads, Celery workers, the forkserver run
launcher) and the wiring of a compiled job to one (`jobs.build_job`). The compiler never
imports this package; only `threaded` is imported here (the other modules pull in more).
"""

from flowmaestro_dagster.engines.threaded import (
    DEFAULT_MAX_CONCURRENT,
    ThreadedExecutor,
    threaded_executor,
    threaded_executor_for,
)

__all__ = [
    "DEFAULT_MAX_CONCURRENT",
    "ThreadedExecutor",
    "threaded_executor",
    "threaded_executor_for",
]
