#!/usr/bin/env bash
# The second test leg: model, cache, generation, save/load, test-time learning and transformers'
# own model tests on the oldest supported transformers (setup.py's lower bound), in .venv-oldest.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --oldest
exec .venv-oldest/bin/python -m pytest -q tests/test_modeling.py tests/test_save_load.py tests/test_in_context.py \
    tests/test_transformers_common.py tests/test_transformers_versions.py "$@"
