"""evaluation/continual/run_sequential.py: domains learned in sequence by tiny models, end to end
(rate sweep, EWC's lambda, every phase, the metrics, resume), and its parts (parameter groups put
back exactly, EWC's penalty)."""

import json
import math

import pytest
import torch

from evaluation.continual import run_sequential
from evaluation.lib.corpora import corpus_text, text_lines
from evaluation.lib.models import ModelShape
from evaluation.lib.results import HEADER

TINY_ARGS = ["--hidden-size", "32", "--num-layers", "2", "--num-heads", "2", "--vocab-size", "300", "--block-size", "32",
             "--target-non-embedding", "40000", "--titans-chunk-size", "16", "--batch-size", "2", "--eval-every", "2",
             "--eval-blocks", "2", "--test-blocks", "2", "--ewc-batches", "2", "--no-progress"]
TINY = ModelShape(hidden_size=32, num_layers=2, num_heads=2, vocab_size=300, block_size=32, target_non_embedding=40_000,
                  titans_chunk_size=16)


@pytest.fixture(scope="module")
def three_domains(tmp_path_factory):
    """Three small .txt corpora (one document a line): English, Spanish, and English again reversed."""
    folder = tmp_path_factory.mktemp("domains")
    english, spanish = (text_lines(corpus_text(c))[:60] for c in ("english", "spanish"))
    paths = []
    for name, lines in (("en", english), ("es", spanish), ("rev", [line[::-1] for line in english])):
        path = folder / f"{name}.txt"
        path.write_text("\n".join(line[:1500] for line in lines))
        paths.append(str(path))
    return paths


def test_sequence_end_to_end_with_sweeps_metrics_and_resume(tmp_path, three_domains):
    output = tmp_path / "seq.json"
    argv = ["--order", *three_domains, "--models", "llama", "llama_ewc", "llama_replay", "titans_cms2", "--seeds", "0",
            "--sweep-lrs", "1e-3", "3e-3", "--ewc-lambdas", "1", "100", "--max-phase-steps", "3", "--output", str(output),
            *TINY_ARGS]
    payload = run_sequential.main(argv)
    assert json.loads(output.read_text()) == payload and list(payload)[: len(HEADER)] == list(HEADER)
    assert payload["complete"] is True
    for suffix in ("_curves.png", "_frontier.png"):
        assert (tmp_path / f"seq{suffix}").stat().st_size > 0
    # one rate sweep per family (every llama strategy shares phase 1), chosen on phase 1's validation loss
    sweeps = [r for r in payload["runs"] if r["kind"] == "lr_sweep"]
    assert sorted((r["family"], r["lr"]) for r in sweeps) == [("hope_titans", 1e-3), ("hope_titans", 3e-3),
                                                              ("llama", 1e-3), ("llama", 3e-3)]
    best_llama = min((r for r in sweeps if r["family"] == "llama"), key=lambda r: r["phases"][0]["validation"][three_domains[0]])
    assert payload["chosen_lr"]["llama [1]"] == best_llama["lr"]
    ewc_sweep = {r["lambda"]: r for r in payload["runs"] if r["kind"] == "ewc_sweep"}
    assert set(ewc_sweep) == {1, 100}
    chosen = min(ewc_sweep.values(), key=lambda r: sum(r["phases"][-1]["validation"][d] for d in three_domains))
    assert payload["chosen_ewc_lambda"] == chosen["lambda"]

    sequences = {r["variant"]: r for r in payload["runs"] if r["kind"] == "sequence"}
    assert set(sequences) == {"llama", "llama_ewc", "llama_replay", "titans_cms2"}
    for variant, run in sequences.items():
        assert [p["domain"] for p in run["phases"]] == three_domains and all(p["steps"] == 3 for p in run["phases"])
        first, last = run["phases"][0]["test"], run["phases"][-1]["test"]
        assert run["backward_transfer_" + three_domains[0]] == pytest.approx(last[three_domains[0]] - first[three_domains[0]])
        assert run["final_average"] == pytest.approx(sum(last.values()) / 3)
        assert all(math.isfinite(v) for v in last.values())
        assert "restored_group" not in run["phases"][0]
        groups = run["phases"][2]["restored_group"]
        expected = {"embeddings", "mixers", "norms"} | ({"mlp"} if variant.startswith("llama") else {"cms_level_0", "cms_level_1"})
        assert set(groups) == expected and set(groups["mixers"]) == set(three_domains[:2])
    # EWC's seed-0 run is the sweep's run at the chosen lambda (not trained twice)
    assert sequences["llama_ewc"]["phases"] == chosen["phases"] and sequences["llama_ewc"]["ewc_lambda"] == chosen["lambda"]
    # the strategies change phases 2.. only: phase 1 is the plain Llama's
    assert sequences["llama_ewc"]["phases"][0]["test"] == sequences["llama"]["phases"][0]["test"]
    assert sequences["llama_replay"]["phases"][1]["test"] != sequences["llama"]["phases"][1]["test"]
    summary = {row["variant"]: row for row in payload["summary"]}
    assert summary["titans_cms2"]["mean_backward_transfer"]["values"] == [sequences["titans_cms2"]["mean_backward_transfer"]]

    again = run_sequential.main([*argv, "--resume"])  # every cell is in the file: nothing runs again
    assert again["runs"] == payload["runs"] and again["command"].count(" ; ") == 1


def test_parameter_groups_put_back_exactly():
    model = run_sequential.model_of("titans_cms2", TINY, seed=0)
    blocks = {"a": {"validation": torch.randint(3, 300, (2, 32))}}
    before = {n: p.detach() + 0.1 for n, p in model.named_parameters()}
    now = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = run_sequential.parse_args(["--eval-blocks", "2"])
    found = run_sequential.forgetting_by_group(model, before, blocks, ["a"], args)
    assert all(torch.equal(p, now[n]) for n, p in model.named_parameters())  # measured, then restored
    groups = run_sequential.parameter_groups(model)
    assert sorted(n for names in groups.values() for n in names) == sorted(now)  # every parameter in one group
    plain = run_sequential.losses(model, blocks, ["a"], "validation", 2)
    assert all(found[g]["a"] != plain["a"] for g in groups)  # each group moved the loss


def test_ewc_penalty_is_zero_at_the_anchor_and_grows_away():
    model = run_sequential.model_of("llama", TINY, seed=0)
    ewc = run_sequential.EWC(strength=10.0)
    ewc.consolidate(model, [torch.randint(3, 300, (2, 32))])
    assert ewc.penalty(model).item() == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    fisher = ewc.anchors[0][0]
    expected = 0.5 * 10.0 * sum((f * 0.01 ** 2).sum() for f in fisher.values())
    assert ewc.penalty(model).item() == pytest.approx(expected.item(), rel=1e-3) and expected > 0
