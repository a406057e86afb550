"""python -m evaluation.continual.run_test_time_learning: rules chosen on validation documents,
read on test documents that no choice or training saw, against dynamic evaluation; end to end
on a tiny Hope."""

import json

import pytest
import torch

from evaluation.continual import run_test_time_learning as runner
from evaluation.lib.corpora import documents as corpus_documents
from evaluation.lib.results import HEADER
from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.data import sample_text_path
from hope_hf.test_time import BUILT_IN_RULE
from hope_hf.training import train_bpe_tokenizer

OWN_RULE = {"rule": "adam", "lr": 1e-3, "segment_size": 8, "max_grad_norm": 1.0}


@pytest.fixture(scope="module")
def tiny_hope(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_hope")
    tokenizer = train_bpe_tokenizer(sample_text_path().read_text().splitlines()[:200], 300)
    config = HopeConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        titans_chunk_size=8, cms_levels=[{"intermediate_size": 64, "update_period": 1},
                                                         {"intermediate_size": 32, "update_period": 2}],
                        test_time_learning=OWN_RULE)
    torch.manual_seed(0)
    HopeForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_documents_come_from_their_split_and_leave_out_what_the_package_holds():
    tokenizer = train_bpe_tokenizer(sample_text_path().read_text().splitlines()[:200], 300)
    seen = runner.seen_by_package()
    test, validation = (runner.long_documents(tokenizer, split, 200, 2) for split in ("test", "validation"))
    assert set(test) == set(validation) == set(runner.DOMAINS)
    for name, corpus in runner.DOMAINS.items():
        assert [len(ids) for ids in test[name]] == [200, 200]
        unseen_test = [t for t in corpus_documents(corpus, "test") if t not in seen]
        unseen_validation = [t for t in corpus_documents(corpus, "validation") if t not in seen]
        start = lambda text: tokenizer(text, add_special_tokens=False).input_ids[:60]
        assert test[name][0][:60].tolist() == start(unseen_test[0])  # the first test document the package does not hold
        assert validation[name][0][:60].tolist() == start(unseen_validation[0])
    # the package's own texts are left out: their documents are in the corpora's splits
    assert any(doc in seen for doc in corpus_documents("spanish", "test"))


def test_rules_are_chosen_on_validation_and_read_on_test(tiny_hope, tmp_path):
    out = tmp_path / "ttl.json"
    families = ["calibrated default", "cms", "dynamic evaluation, mlp"]
    result = runner.main(["--hope", str(tiny_hope), "--tokens", "48", "--validation-tokens", "32", "--segment-size", "8",
                          "--statistics-blocks", "2", "--families", *families, "--output", str(out)])
    assert json.loads(out.read_text()) == result and out.with_suffix(".png").stat().st_size > 0
    assert list(result)[: len(HEADER)] == list(HEADER) and result["complete"]
    runs = result["runs"]
    validation = [r for r in runs if r["split"] == "validation"]
    test = [r for r in runs if r["split"] == "test"]
    grid = {f: runner.HOPE_GRID[f] for f in ("cms", "dynamic evaluation, mlp")}
    assert len(validation) == 3 * (1 + sum(map(len, grid.values())))  # plain and every option, every domain
    for family, options in grid.items():
        scores = {}
        for o in options:
            rows = [r for r in validation if r["family"] == family and r["options"] == o]
            assert len(rows) == 3
            scores[runner.label(o)] = sum(r["vs_plain"]["second_half_vs_plain"] for r in rows) / 3
        chosen = result["chosen_on_validation"][family]
        assert chosen["validation_scores"] == pytest.approx(scores)
        assert runner.label(chosen["options"]) == min(scores, key=scores.get)
        assert [r["options"] for r in test if r["family"] == family] == [chosen["options"]] * 3
    own = [r for r in test if r["family"] == "calibrated default"]
    assert len(own) == 3 and all(r["resolved_options"] == {**BUILT_IN_RULE, **OWN_RULE} and r["segment_size"] == 8 for r in own)
    assert result["calibrated_default"] == OWN_RULE and result["calibration"] is None  # the fixture was not calibrated
    for run in test:
        plain = next(r for r in test if r["family"] == "plain reading" and r["document"] == run["document"])
        assert len(run["segment_losses"]) == len(plain["segment_losses"]) == 6  # 48 tokens in segments of 8
        assert run["segment_losses"][0] == pytest.approx(plain["segment_losses"][0], abs=1e-6)  # read before any step
        if run["family"] != "plain reading":
            assert run["segment_losses"][1:] != pytest.approx(plain["segment_losses"][1:], abs=1e-6)
            assert run["autograd_saved_kb_per_token"] > 0 and run["state_mb"] > 0
            summary = result["summary"][run["document"]][run["family"]]
            assert summary["second_half_vs_plain"] == pytest.approx(run["second_half"] / plain["second_half"] - 1)
    assert all(r["autograd_saved_kb_per_token"] == 0 for r in test if r["family"] == "plain reading")  # no graph
    again = runner.main(["--hope", str(tiny_hope), "--tokens", "48", "--validation-tokens", "32", "--segment-size", "8",
                         "--statistics-blocks", "2", "--families", *families, "--output", str(out), "--resume"])
    assert again["runs"] == runs and again["command"].count(" ; ") == 1  # nothing is read twice


def test_bad_arguments_are_refused(tiny_hope, tmp_path, capsys):
    for argv, message in ((["--hope", str(tiny_hope), "--model", str(tiny_hope)], "--hope and --model"),
                          (["--model", str(tmp_path)], "holds no saved model: run bash scripts/run_main.sh first"),
                          (["--hope", str(tiny_hope), "--families", "sgd"], "--families: unknown ['sgd']")):
        with pytest.raises(SystemExit) as done:
            runner.main(argv)
        assert done.value.code == 2 and message in capsys.readouterr().err
