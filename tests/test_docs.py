"""Every code block in docs/*.md marked <!-- runnable --> runs as written (README.md: test_readme.py)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCKS = [(page.name, i, block) for page in sorted(DOCS.glob("*.md"))
          for i, block in enumerate(re.findall(r"<!-- runnable -->\s*```python\n(.*?)```", page.read_text(), re.DOTALL))]


def test_docs_have_runnable_examples():
    pages = {page for page, _, _ in BLOCKS}
    assert {"peft.md", "trainer.md", "distributed.md", "hub.md"} <= pages, pages


@pytest.mark.parametrize("page,index,block", BLOCKS, ids=[f"{page}:{i}" for page, i, _ in BLOCKS])
def test_docs_block_runs_as_written(page, index, block, tmp_path):
    result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), f"an example in docs/{page} should print what it shows"
