"""The benchmark sections, in the order a full run takes them, and how one runs in a child.

Each section is a `run(quick: bool) -> dict` function. `python -m bench` runs every section in
its own process (`python -m bench.sections NAME OUT [--quick]`), so a section that fails, hangs
or leaks threads and processes does not touch the others' figures.
"""

import importlib
import json
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    target: str  # "module:function", the function taking `quick`
    full_minutes: float  # expected duration of the full run on 2 idle cores
    quick_minutes: float

    def function(self) -> Callable[[bool], dict[str, Any]]:
        module, _, attribute = self.target.partition(":")
        function: Callable[[bool], dict[str, Any]] = getattr(
            importlib.import_module(module), attribute
        )
        return function

    def timeout_seconds(self, quick: bool) -> float:
        """Generous: three times the expected duration, plus five minutes."""
        return ((self.quick_minutes if quick else self.full_minutes) * 3 + 5) * 60


SECTIONS = [
    Section("compile", "Compiler", "bench.compile_and_run:compile_section", 0.5, 0.3),
    Section("overhead", "Per-node overhead", "bench.compile_and_run:overhead_section", 1.5, 0.5),
    Section("parallel", "Parallel nodes in one run", "bench.parallel:run", 3, 2),
    Section("celery", "Celery workers", "bench.celery_workers:run", 3, 2),
    Section("api", "API submissions", "bench.api:run", 3, 2),
    Section("waitpoints", "Waitpoints", "bench.waitpoints:run", 3, 2),
    Section("webhooks", "Webhook deliveries", "bench.webhooks:run", 12, 8),
    Section("queues", "Run queues", "bench.queues:run", 5, 3),
    Section("fairness", "Fair scheduling between users", "bench.fairness:run", 12, 3),
    Section("deploy", "Deploy → runnable", "bench.deploy:run", 40, 6),
    Section("events", "Live events", "bench.events:run", 15, 4),
    Section("metrics", "Metrics scrape", "bench.metrics:run", 12, 3),
    Section("media", "Media nodes", "bench.media:run", 3, 2),
    Section("analytics", "Workflow analytics at scale", "bench.analytics:run", 8, 1),
    Section("scale_runs", "10,000 parked and many concurrent runs", "bench.scale_runs:run", 12, 2),
]
BY_NAME = {s.name: s for s in SECTIONS}


def run_here(name: str, out: Path, quick: bool) -> int:
    """Run one section in this process and write {"result": ...} or {"error": ...} to `out`."""
    try:
        result = BY_NAME[name].function()(quick)
    except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt too: the parent's timeout
        out.write_text(
            json.dumps(
                {
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc()[-4000:],
                }
            )
        )
        return 1
    out.write_text(json.dumps({"result": result}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run_here(sys.argv[1], Path(sys.argv[2]), "--quick" in sys.argv[3:]))
