#!/usr/bin/env bash
# System packages the tests need beyond Python: Debian's chromium for the approval-page test
# (Playwright drives it; its own browser download cannot work here).
set -uo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing chromium (Debian package)"
  apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }
fi
if ! command -v chromium >/dev/null 2>&1; then
  echo "chromium is not installed (apt-get install chromium); the approval-page test needs it" >&2
  [ "${CI:-}" = "true" ] && exit 1
fi
exit 0
