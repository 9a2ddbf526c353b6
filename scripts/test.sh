#!/usr/bin/env bash
# Set up (idempotent), run the lint, import-layer and type checks (scripts/lint.sh), then the whole
# test suite: unit, API (official openai SDK against a real server, on SQLite and on a throwaway
# PostgreSQL server the tests start and stop themselves), end-to-end on the real SmolLM2-135M, the
# Ray executor on a local Ray cluster, and the dashboard in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${EXTRAS:-ray} bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
bash scripts/lint.sh
# The 30 slowest tests close the log: where the CI budget goes.
python -m pytest -q -p no:cacheprovider --durations=30 "$@"
