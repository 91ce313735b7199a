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
echo "== mypy"
mypy
echo "== pytest"
pytest "$@"
