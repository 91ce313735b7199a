#!/usr/bin/env bash
# System packages the tests need beyond Python, each as "command:Debian package:why":
# Debian's chromium for the approval-page test (Playwright drives it; its own browser download
# cannot work here), and bubblewrap, the namespace sandbox Python code nodes run in
# (docs/sandbox.md; without it they fall back to Landlock alone, or are refused).
set -uo pipefail
# `system-deps.sh runtime` (scripts/dev.sh): only what the platform itself runs with.
needs=("bwrap:bubblewrap:Python code nodes run inside it (docs/sandbox.md)")
# Documents (docs/nodes.md#pdfgeneration): a "-" command is a library package, checked with dpkg.
needs+=(
  "tesseract:tesseract-ocr:ocrExtraction runs it"
  "-:tesseract-ocr-eng:ocrExtraction's English language data"
  "-:libpango-1.0-0:pdfGeneration (WeasyPrint) lays text out with it"
  "-:libpangoft2-1.0-0:pdfGeneration (WeasyPrint) loads fonts with it"
  "-:fonts-dejavu-core:the PDF templates' first font (and the OCR tests draw text with it)"
)
present() {
  if [ "$1" = "-" ]; then
    dpkg-query -W -f='${Status}' "$2" 2>/dev/null | grep -q "install ok installed"
  else
    command -v "$1" >/dev/null 2>&1
  fi
}
# Charts (docs/nodes.md#chartgeneration): vl-convert draws PNG text with the system's fonts
# (Vega's default "sans-serif" resolves to Liberation Sans; without fonts charts lose their text).
needs+=("-:fonts-liberation:chartGeneration draws chart text with it")
# Web nodes (docs/nodes.md#screenshotcapture): Playwright drives Debian's chromium.
needs+=("chromium:chromium:screenshotCapture runs it (and the approval-page test)")
# Tests only: the two-host test (tests/test_multi_host.py) builds network namespaces and forwards
# PostgreSQL and Redis into them.
if [ "${1:-}" != "runtime" ]; then
  needs+=("ip:iproute2:the multi-host test creates network namespaces with it")
  needs+=("socat:socat:the multi-host test forwards PostgreSQL and Redis to its hosts with it")
  needs+=("unshare:util-linux:the multi-host test gives each host its own hostname with it")
fi
status=0
for need in "${needs[@]}"; do
  IFS=: read -r command package why <<<"$need"
  if present "$command" "$package"; then
    continue
  fi
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing $package (Debian package)"
    apt-get install -y -q "$package" >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$package" >/dev/null 2>&1; }
  fi
  if ! present "$command" "$package"; then
    what="$command"; [ "$command" = "-" ] && what="$package"
    echo "$what is not installed (apt-get install $package); $why" >&2
    [ "${CI:-}" = "true" ] && status=1
  fi
done
exit "$status"
