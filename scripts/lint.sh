#!/usr/bin/env bash
# The checks that run before the tests (a few seconds each): lint, import layers, types.
# Run from a set-up checkout (scripts/setup.sh installs the tools with the test extra).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${VIRTUAL_ENV:-}" ] || . .venv/bin/activate
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
ruff check src tests bench
ruff format --check src tests bench scripts
lint-imports
mypy
