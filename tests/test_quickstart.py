"""The README quick-start runs as written (fewer steps)."""

import subprocess
import sys
from pathlib import Path

from huggingface_hub import ModelCard

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_trains_saves_reloads_and_generates(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "quickstart.py"), "--steps", "5", "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "identical logits: True" in result.stdout
    assert "generate(): In the beginning" in result.stdout
    log = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert len(log) == 5
    assert (tmp_path / "model" / "model.safetensors").exists()
    card = ModelCard.load(tmp_path / "model" / "README.md")
    assert card.data.library_name == "transformers" and "| training loss, step 5 |" in card.text
