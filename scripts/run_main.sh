#!/usr/bin/env bash
# Set up (.venv, installs) and run the main job: retrofit the real SmolLM2-135M-Instruct with a
# CMS and continual-pretrain it on the embedded Spanish text, measuring forgetting on English and
# Python code (validation curves of every domain, test-split before/after and a verdict line, results.json, loss_curve.png).
# Extra arguments go to scripts/continual_pretrain.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/continual_pretrain.py "$@"
