"""Every README code block marked <!-- runnable --> runs as written."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"<!-- runnable -->\s*```python\n(.*?)```", README.read_text(), re.DOTALL)


def test_readme_has_runnable_examples():
    assert len(BLOCKS) >= 1  # the quick start; docs/*.md hold the others (tests/test_docs.py)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs_as_written(index, tmp_path):
    result = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "a README example should print what it shows"
