#!/usr/bin/env bash
# Sets up .venv and starts the platform: Dagster webserver + daemon on dagster_home/ (SQLite)
# with the example workflows from workflows/. Extra arguments go to `flowmaestro dev`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/bootstrap.sh
exec .venv/bin/flowmaestro dev "$@"
