#!/usr/bin/env bash
# System packages the tests need beyond Python, each as "command:Debian package:why":
# Debian's chromium for the approval-page test (Playwright drives it; its own browser download
# cannot work here), and bubblewrap, the namespace sandbox Python code nodes run in
# (docs/sandbox.md; without it they fall back to Landlock alone, or are refused).
set -uo pipefail
# `system-deps.sh runtime` (scripts/dev.sh): only what the platform itself runs with.
needs=("bwrap:bubblewrap:Python code nodes run inside it (docs/sandbox.md)")
if [ "${1:-all}" != "runtime" ]; then
  needs+=("chromium:chromium:the approval-page test needs it")
fi
status=0
for need in "${needs[@]}"; do
  IFS=: read -r command package why <<<"$need"
  if command -v "$command" >/dev/null 2>&1; then
    continue
  fi
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing $package (Debian package)"
    apt-get install -y -q "$package" >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$package" >/dev/null 2>&1; }
  fi
  if ! command -v "$command" >/dev/null 2>&1; then
    echo "$command is not installed (apt-get install $package); $why" >&2
    [ "${CI:-}" = "true" ] && status=1
  fi
done
exit "$status"
