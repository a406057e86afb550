"""The README's quick-start code block runs as written."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quickstart_runs_as_written(tmp_path):
    block = re.search(r"<!-- quickstart -->\s*```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert block, "README lost its quick-start block"
    result = subprocess.run([sys.executable, "-c", block.group(1)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loss after 20 steps" in result.stdout
    assert (tmp_path / "hope-tiny" / "model.safetensors").exists()
