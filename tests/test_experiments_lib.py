"""The experiments' library (evaluation.lib) and the single-process loop under it
(hope_hf.training.train_steps): results files, resumption, sweeps, the loop's contract."""

import argparse
import json
import math

import pytest
import torch

from evaluation.lib.results import HEADER, ResultsFile, add_output_arguments, output_path, run_cells
from evaluation.lib.sweep import grid, spread, summarize
from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.training import train_steps, warmup_cosine


def parse(argv, name="thing"):
    parser = argparse.ArgumentParser()
    add_output_arguments(parser, name)
    return parser.parse_args(argv)


def test_outputs_by_default_committed_only_when_asked(tmp_path):
    assert str(output_path(parse([]), "thing")) == "outputs/thing.json"
    assert output_path(parse(["--commit-results"]), "thing").parts[-3:] == ("evaluation", "results", "thing.json")
    assert output_path(parse(["--output", str(tmp_path / "x.json")]), "thing") == tmp_path / "x.json"
    with pytest.raises(SystemExit, match="exclusive"):
        output_path(parse(["--output", "x.json", "--commit-results"]), "thing")


def test_results_file_header_cells_and_resume(tmp_path):
    path = tmp_path / "r.json"
    results = ResultsFile(path, "python -m x --a 1", {"a": 1, "seeds": [0]})
    calls = []

    def run_cell(cell):
        calls.append(cell)
        return {"loss": float(cell["seed"])}

    run_cells(results, grid(seed=[0, 1], lr=[1e-3]), run_cell)
    saved = json.loads(path.read_text())
    assert list(saved)[: len(HEADER)] == list(HEADER) and saved["command"] == "python -m x --a 1"
    assert set(saved["versions"]) >= {"python", "torch", "transformers", "hope-hf"} and saved["versions"]["torch"]
    assert [r["seed"] for r in saved["runs"]] == [0, 1] and len(calls) == 2
    assert not path.with_suffix(".json.partial").exists()

    # resumed: the recorded cells are skipped, the commands and durations carry on
    again = ResultsFile(path, "python -m x --a 1 --resume", {"a": 1, "seeds": [0, 1, 2]}, resume=True, varying=("seeds",))
    runs = run_cells(again, grid(seed=[1, 2], lr=[1e-3]), run_cell)
    assert [c["seed"] for c in calls] == [0, 1, 2] and [r["seed"] for r in runs] == [1, 2]
    saved = json.loads(path.read_text())
    assert saved["command"] == "python -m x --a 1 ; python -m x --a 1 --resume" and len(saved["runs"]) == 3
    with pytest.raises(SystemExit, match="other settings"):
        ResultsFile(path, "python -m x --a 2", {"a": 2, "seeds": [0]}, resume=True, varying=("seeds",))
    # without --resume the file starts over
    assert ResultsFile(path, "python -m x", {"a": 2}).runs == []


def test_sweep_spread_and_summary_over_seeds():
    assert spread([1.0, 3.0]) == {"values": [1.0, 3.0], "mean": 2.0, "min": 1.0, "max": 3.0, "std": pytest.approx(2 ** 0.5)}
    assert math.isnan(spread([1.0, float("nan")])["mean"]) and spread([2.0])["std"] is None
    runs = [{"lr": lr, "seed": s, "val": v, "test": v + 1} for lr, s, v in
            [(1, 0, 3.0), (1, 1, 3.2), (2, 0, 2.0), (2, 1, 2.4), (3, 0, 1.0), (3, 1, float("inf"))]]
    rows = {row["lr"]: row for row in summarize(runs, by=("lr",), metrics=("val", "test"))}
    assert rows[2]["seeds"] == [0, 1] and rows[2]["test"]["mean"] == pytest.approx(3.2)
    assert math.isnan(rows[3]["val"]["mean"]) and rows[3]["val"]["min"] == 1.0  # lr 3 diverged on one seed


def tiny_hope():
    config = HopeConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                        titans_chunk_size=4, cms_levels=[{"intermediate_size": 16, "update_period": 1},
                                                         {"intermediate_size": 8, "update_period": 3}])
    return HopeForCausalLM(config)


def test_train_steps_runs_the_cms_schedule_and_evaluates_on_time():
    torch.manual_seed(0)
    model = tiny_hope()
    slow = [p for n, p in model.named_parameters() if "levels.1" in n]
    assert slow, "the test needs the slow CMS level's parameters"
    ids = torch.randint(0, 50, (2, 9))
    snapshots = []

    def backward(step):
        snapshots.append([p.detach().clone() for p in slow])
        loss = model(ids, labels=ids).loss
        loss.backward()
        return loss.detach()

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out = train_steps(model, [optimizer], backward, 7, evaluate=lambda: {"loss": 1.0}, eval_every=3,
                      lr_factor=lambda s: warmup_cosine(s, 7, 2), progress=False)
    assert [e["step"] for e in out["evaluations"]] == [0, 3, 6, 7] and out["steps_run"] == 7
    snapshots.append([p.detach().clone() for p in slow])
    moved = [not all(torch.equal(a, b) for a, b in zip(snapshots[i], snapshots[i + 1])) for i in range(7)]
    assert moved == [False, False, True, False, False, True, False]  # period 3: steps 3 and 6 only


def test_train_steps_stops_on_request_and_on_a_non_finite_loss():
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def backward(step):
        loss = model(torch.ones(1, 2)).sum() * 0 + (float("nan") if step == 4 else 1.0)
        loss.backward()
        return loss.detach()

    out = train_steps(model, [optimizer], backward, 10, evaluate=lambda: {"acc": 0.5}, eval_every=2,
                      stop=lambda e: e["step"] == 2, progress=False)
    assert out["steps_run"] == 2 and out["stopped_early"]
    out = train_steps(model, [optimizer], backward, 10, progress=False)
    assert out["steps_run"] == 4 and out["stopped_early"] and math.isnan(out["train_loss"][-1])
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        train_steps(model, [optimizer], backward, 0)
