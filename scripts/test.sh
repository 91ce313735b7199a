#!/usr/bin/env bash
# The whole test command: set up .venv, make sure local services answer, lint, type-check, test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/bootstrap.sh
scripts/services.sh
scripts/system-deps.sh
export PATH="$root/.venv/bin:$PATH"

echo "== ruff"
ruff format --check .
ruff check .
echo "== import contracts"
lint-imports --no-cache
echo "== mypy"
mypy
echo "== pytest"
# Three workers on two cores, a whole test file each: end-to-end files share one Dagster stack per
# file and spend most of their time waiting on it (a schedule's first tick alone is 1-2 minutes),
# so a third worker overlaps those waits with the unit tests. Files go out longest first
# (tests/conftest.py orders them; xdist's own reorder would send the few-test end-to-end files last).
pytest -n "${FLOWMAESTRO_TEST_WORKERS:-3}" --dist loadfile --no-loadscope-reorder "$@"
