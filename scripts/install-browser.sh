#!/usr/bin/env bash
# Install what the dashboard's browser tests (tests/browser/) need: Debian's chromium and the
# `playwright` Python package that drives it. Never `playwright install`: that downloads a browser
# build from a CDN, which is unreachable here; the tests use /usr/bin/chromium instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
if [ -x .venv/bin/python ]; then . .venv/bin/activate; fi
# axe-playwright-python ships the axe-core engine the tests use to check accessibility.
python -c "import playwright, axe_playwright_python" 2>/dev/null || pip install -q playwright axe-playwright-python
