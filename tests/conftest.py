"""Fresh random inputs every run, reproducible per test: each test is seeded with the session
seed (printed in the header; set HOPE_TEST_SEED to replay a run) plus a hash of its name."""

import os
import random
import zlib

import pytest
import torch

if not torch.cuda.is_available():  # run the project's Triton kernels in the interpreter (read at import)
    os.environ.setdefault("TRITON_INTERPRET", "1")

SESSION_SEED = int(os.environ.get("HOPE_TEST_SEED", random.SystemRandom().randrange(2**31)))


def pytest_report_header(config):
    return f"hope-hf test seed: HOPE_TEST_SEED={SESSION_SEED}"


def pytest_terminal_summary(terminalreporter):
    """Also at the end: pytest -q (what the scripts run) shows no header."""
    terminalreporter.write_line(f"hope-hf test seed: HOPE_TEST_SEED={SESSION_SEED}")


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """Scripts run in-process may call torch.set_num_threads; a changed thread count changes
    reduction order, and later bit-for-bit comparisons with a fresh process would fail."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def seeded(request):
    seed = (SESSION_SEED + zlib.crc32(request.node.nodeid.encode())) % 2**31
    torch.manual_seed(seed)
    random.seed(seed)
    return seed
