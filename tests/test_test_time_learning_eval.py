"""evaluation/continual/run_test_time_learning.py with --hope: a saved Hope model reads the three
documents with and without test-time updates, end to end on a tiny model (issue 19)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.data import sample_text_path
from hope_hf.training import train_bpe_tokenizer

SCRIPT = Path(__file__).resolve().parents[1] / "evaluation" / "continual" / "run_test_time_learning.py"
sys.path.insert(0, str(SCRIPT.parent))
import run_test_time_learning  # noqa: E402

sys.path.pop(0)


@pytest.fixture(scope="module")
def tiny_hope(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_hope")
    tokenizer = train_bpe_tokenizer(sample_text_path().read_text().splitlines()[:200], 300)
    config = HopeConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        titans_chunk_size=8, cms_levels=[{"intermediate_size": 64, "update_period": 1},
                                                         {"intermediate_size": 32, "update_period": 2}])
    torch.manual_seed(0)
    HopeForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_english_document_for_a_hope_is_outside_its_training_text():
    tokenizer = train_bpe_tokenizer(sample_text_path().read_text().splitlines()[:200], 300)
    docs = run_test_time_learning.documents(tokenizer, english_from_full_bible=True)
    english_end = tokenizer.decode(docs["English"][-200:])
    assert english_end.strip() and english_end.strip()[-60:] not in sample_text_path().read_text()
    assert english_end.rstrip().endswith("book of life.")  # Revelation 21, before the glossary of the last line
    assert set(docs) == {"Spanish", "English", "Python code"}


def test_hope_reads_with_and_without_updates(tiny_hope, tmp_path):
    out = tmp_path / "ttl"
    command = [sys.executable, str(SCRIPT), "--hope", str(tiny_hope), "--tokens", "40", "--segment-size", "8",
               "--rules", "sgd lr 1e-2 (default)", "adam lr 1e-3", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    result = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".png").exists()
    rules = {run["rule"] for run in result["runs"]}
    assert rules == {"plain reading", "sgd lr 1e-2 (default)", "adam lr 1e-3"}
    for document in ("Spanish", "English", "Python code"):
        runs = {run["rule"]: run for run in result["runs"] if run["document"] == document}
        plain = runs["plain reading"]["segment_losses"]
        assert len(plain) == 5
        for rule in ("sgd lr 1e-2 (default)", "adam lr 1e-3"):
            losses = runs[rule]["segment_losses"]
            # the first segment is read before any update; later ones see the updated levels
            assert losses[0] == pytest.approx(plain[0], abs=1e-6)
            assert losses[1:] != pytest.approx(plain[1:], abs=1e-6)


def test_hope_and_model_are_exclusive(tiny_hope):
    done = subprocess.run([sys.executable, str(SCRIPT), "--hope", str(tiny_hope), "--model", str(tiny_hope)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--hope and --model" in done.stderr
