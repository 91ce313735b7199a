"""Jobs the Celery worker tests run on real worker processes (tests/test_celery_worker.py).

A worker rebuilds a job from its module, so these live in an importable module of their own.
`versioned_job`'s one node passes through the text in the file `FLOWMAESTRO_TEST_JOB_VALUE`
names: a test changes the definition behind an unchanged job name by rewriting that file.
"""

import os
from pathlib import Path
from typing import Any

from dagster import JobDefinition

from flowmaestro_dagster.engines.jobs import build_job

VALUE_FILE_ENV = "FLOWMAESTRO_TEST_JOB_VALUE"


def versioned_definition(value: str) -> dict[str, Any]:
    """One transform node, on Celery, whose output is `value`."""
    return {
        "name": "versioned",
        "nodes": {
            "n": {"type": "transform", "config": {"operation": "passthrough", "inputData": value}}
        },
        "edges": [],
        "settings": {"runOn": "celery"},
    }


def versioned_job() -> JobDefinition:
    value = Path(os.environ[VALUE_FILE_ENV]).read_text(encoding="utf-8")
    return build_job(versioned_definition(value), job_name="versioned").job
