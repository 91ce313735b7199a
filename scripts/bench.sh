#!/usr/bin/env bash
# Runs every benchmark and rewrites docs/benchmarks.md.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/bootstrap.sh
exec .venv/bin/python -m bench "$@"
