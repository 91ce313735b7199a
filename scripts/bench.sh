#!/usr/bin/env bash
# Runs every benchmark (bench/, ~24 min on 2 idle cores) and rewrites docs/benchmarks.md; raw
# results go to bench/results/<stamp>.json. Needs PostgreSQL and Redis (scripts/services.sh);
# the first run creates bench/.prefect-venv (Prefect 3, for the comparison).
#   scripts/bench.sh --quick           smoke run (small samples; the page says so)
#   scripts/bench.sh --only deploy     one section (results file only; --docs to render it)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/bootstrap.sh
exec .venv/bin/python -m bench "$@"
