#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite: unit, API (official openai SDK against a real
# server), end-to-end on the real SmolLM2-135M, and the dashboard in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m pytest -q -p no:cacheprovider "$@"
