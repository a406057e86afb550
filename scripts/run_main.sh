#!/usr/bin/env bash
# Set up (.venv, installs) and run the main job on the embedded default text.
# Until the training job exists, the main job is the quick-start. Extra arguments are passed on.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/quickstart.py "$@"
