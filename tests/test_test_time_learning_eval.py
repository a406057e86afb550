"""python -m evaluation.continual.run_test_time_learning with --hope: a saved Hope model reads the
three documents (the corpora's test splits) with and without test-time updates, end to end on a
tiny model."""

import json

import pytest
import torch

from evaluation.continual import run_test_time_learning
from evaluation.lib.corpora import documents as corpus_documents
from evaluation.lib.results import HEADER
from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.data import sample_text_path
from hope_hf.training import train_bpe_tokenizer


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
    docs = run_test_time_learning.documents(tokenizer)
    english_end = tokenizer.decode(docs["English"][-200:])
    assert english_end.strip() and english_end.strip()[-60:] not in sample_text_path().read_text()
    # the english corpus's last test chapter (Revelation 15), not a private copy of the Bible
    last = corpus_documents("english", "test")[-1]
    assert english_end.rstrip().endswith("would be finished.") and last.rstrip().endswith(english_end.strip()[-60:])
    assert set(docs) == {"Spanish", "English", "Python code"}


def test_hope_reads_with_and_without_updates(tiny_hope, tmp_path):
    out = tmp_path / "ttl"
    run_test_time_learning.main(["--hope", str(tiny_hope), "--tokens", "40", "--segment-size", "8",
                                 "--rules", "sgd lr 1e-2 (default)", "adam lr 1e-3", "--output", str(out.with_suffix(".json"))])
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


def test_hope_and_model_are_exclusive(tiny_hope, capsys):
    with pytest.raises(SystemExit) as done:
        run_test_time_learning.main(["--hope", str(tiny_hope), "--model", str(tiny_hope)])
    assert done.value.code == 2 and "--hope and --model" in capsys.readouterr().err


def test_a_default_run_writes_under_outputs_with_the_results_header_and_resumes(tiny_hope, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--hope", str(tiny_hope), "--tokens", "16", "--segment-size", "8", "--rules", "sgd lr 1e-2 (default)"]
    first = run_test_time_learning.main(argv)
    saved = json.loads((tmp_path / "outputs" / "test_time_learning_hope.json").read_text())
    assert list(saved)[: len(HEADER)] == list(HEADER) and saved == first and len(saved["runs"]) == 6
    again = run_test_time_learning.main(argv + ["--resume"])  # every document and rule is there: nothing is reread
    assert again["runs"] == first["runs"] and again["command"].count(" ; ") == 1
