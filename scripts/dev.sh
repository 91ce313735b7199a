#!/usr/bin/env bash
# Sets up .venv and starts the platform: Dagster webserver + daemon on dagster_home/ (SQLite)
# with the example workflows from workflows/. Extra arguments go to `flowmaestro dev`.
# It prints the URLs and the API key once they answer, then only warnings and errors; for
# every log line (sensor ticks, requests): FLOWMAESTRO_DEV_LOG_LEVEL=info scripts/dev.sh
# (or scripts/dev.sh --log-level info).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/bootstrap.sh
scripts/system-deps.sh runtime  # bubblewrap: the Python code nodes' sandbox
exec .venv/bin/flowmaestro dev "$@"
