#!/usr/bin/env bash
# Debian's chromium drives the browser tests (Playwright cannot download its own browser here)
# and lets kaleido export PNG/SVG figures. Install it when missing and we are root.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian chromium for the browser tests..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "chromium is missing and cannot be installed here (not root or no apt-get):" >&2
  echo "the browser tests will be skipped; install it with: sudo apt-get install chromium" >&2
fi
