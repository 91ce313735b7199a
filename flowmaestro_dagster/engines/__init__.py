"""Executors for compiled workflows: ready nodes of one run run concurrently on threads.

Only `threaded` is imported here (it depends on Dagster alone), so the compiler can import this
package; the helpers that run a compiled workflow on its own executor are in `.local`.
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
