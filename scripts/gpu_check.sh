#!/usr/bin/env bash
# The prepared GPU check (evaluation/benchmarks/gpu_check.py): the fused kernels' tests on the GPU,
# kernel timings (fused, fla bridge, fla's chunk_gated_delta_rule, SDPA) at T=2K/8K, and a
# Hope-125M vs Llama-125M bf16 training step; one JSON, outputs/gpu_check.json. Set-up as
# run_tests.sh (bootstrap); extra arguments go to the module (e.g. --commit-results, --parts).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec timeout 480 .venv/bin/python -m evaluation.benchmarks.gpu_check "$@"
