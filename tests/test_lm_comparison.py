"""evaluation/lm and the library under it: parameter matching, the corpora's splits, the batch order
shared by every model, and tiny end-to-end runs of the comparison and the optimizer sweep."""

import json
import math
from dataclasses import asdict, replace

import pytest
import torch

from evaluation.lib import corpora
from evaluation.lib.corpora import SPLITS, batch_order, code_documents, documents
from evaluation.lib.models import MODELS, TITANS_VARIANTS, ModelShape, build_model, matched_models
from evaluation.lib.results import HEADER
from evaluation.lib.sweep import rate_search, tuned_summary
from evaluation.lib.training import M3, OptimizerSpec, RunSettings, accumulate_gradients, make_optimizers, train_lm
from evaluation.lm import run_lm_comparison, run_optimizer_sweep

TINY = ModelShape(hidden_size=32, num_layers=2, num_heads=2, vocab_size=97, block_size=16,
                  target_non_embedding=40_000, titans_chunk_size=8)


@pytest.mark.parametrize("shape", [ModelShape(), TINY, replace(ModelShape(), num_layers=6, target_non_embedding=2_000_000)],
                         ids=["pilot", "tiny", "6-layer-2M"])
def test_matched_models_within_five_percent(shape):
    sizes = matched_models(MODELS, shape)
    for name, size in sizes.items():
        assert abs(size["non_embedding"] / shape.target_non_embedding - 1) <= 0.05, (name, size)
        with torch.device("meta"):
            model = build_model(name, shape, size["mlp_size"])
        total = sum(p.numel() for p in model.parameters())
        assert size["embedding"] == 2 * shape.vocab_size * shape.hidden_size  # untied input + output
        assert size["non_embedding"] + size["embedding"] == total


@pytest.mark.parametrize("name", list(TITANS_VARIANTS))
def test_titans_variants_change_only_their_fields_and_match_parameters(name):
    sizes = matched_models(["hope_titans", name], TINY)
    assert abs(sizes[name]["non_embedding"] / TINY.target_non_embedding - 1) <= 0.05
    with torch.device("meta"):
        titans = build_model("hope_titans", TINY, 64).config.to_dict()
        variant = build_model(name, TINY, 64).config.to_dict()
    changed = {key for key in titans if titans[key] != variant[key]}
    assert changed == set(TITANS_VARIANTS[name]) and all(variant[k] == v for k, v in TITANS_VARIANTS[name].items())


def test_matching_rejects_a_target_below_the_mixers():
    with pytest.raises(ValueError, match="hope_titans"):
        matched_models(["hope_titans"], replace(TINY, target_non_embedding=2_000))


def test_models_differ_only_where_named():
    """The baseline stack keeps the Hope block but swaps the mixer; Llama is transformers' own."""
    with torch.device("meta"):
        gdn = build_model("gated_deltanet", TINY, 64)
        titans = build_model("hope_titans", TINY, 64)
        llama = build_model("llama", TINY, 64)
    assert type(gdn.model.layers[0].mixer).__name__ == "GatedDeltaNetMixer"
    assert type(titans.model.layers[0].mixer).__name__ != "GatedDeltaNetMixer"
    assert titans.config.titans_decay_init_min == 0.99
    assert [lv["update_period"] for lv in titans.config.cms_levels] == [1, 8]
    assert len(gdn.config.cms_levels) == 1
    assert type(llama).__name__ == "LlamaForCausalLM" and llama.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("corpus", ["english", "spanish"])
def test_text_splits_deterministic_and_disjoint(corpus):
    splits = {split: documents(corpus, split) for split in SPLITS}
    assert splits == {split: documents(corpus, split) for split in SPLITS}
    for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        assert not set(splits[a]) & set(splits[b]), (a, b)
    held_out = len(splits["validation"]) + len(splits["test"])
    share = held_out / (held_out + len(splits["train"]))
    assert 0.03 < share < 0.07
    assert abs(len(splits["validation"]) - len(splits["test"])) <= 1  # held-out documents alternate


def test_unknown_corpus_and_split_are_refused_by_name():
    with pytest.raises(ValueError, match="corpus must be one of"):
        documents("klingon", "train")
    with pytest.raises(ValueError, match="split must be one of"):
        documents("english", "held_out")


def test_python_split_by_name_and_missing_files_skipped(tmp_path, capsys):
    names = [f"module_{i}.py" for i in range(60)]
    for name in names[:-1]:  # the last one is missing
        (tmp_path / name).write_text(f"# {name}\nx = 1\n")
    splits = {split: code_documents(split, tmp_path, files=names) for split in SPLITS}
    assert "module_59.py is missing" in capsys.readouterr().err
    assert sum(map(len, splits.values())) == 59 and all(splits.values())
    for split in SPLITS:
        expected = {f"# {n}\nx = 1\n" for n in names[:-1] if corpora.split_of_name(n) == split}
        assert set(splits[split]) == expected
        # a file's side of the split does not depend on which other files exist
        assert set(code_documents(split, tmp_path, files=names[::2])) == expected & {f"# {n}\nx = 1\n" for n in names[::2]}


def test_stdlib_corpus_split_is_disjoint():
    train, validation, test = (documents("code", split) for split in SPLITS)
    assert len(train) > 100 and len(validation) + len(test) > 5 and test
    assert not set(train) & (set(validation) | set(test)) and not set(validation) & set(test)


def test_batch_order_depends_on_the_data_seed_only():
    order = batch_order(10, 7, 3, data_seed=0)
    assert order.shape == (7, 3)
    assert torch.equal(order, batch_order(10, 7, 3, data_seed=0))
    assert not torch.equal(order, batch_order(10, 7, 3, data_seed=1))
    first_epoch = order.flatten()[:10]
    assert sorted(first_epoch.tolist()) == list(range(10))  # every block once per epoch


def test_every_model_trains_on_the_same_tokens_in_the_same_order():
    blocks = {"train": torch.randint(3, TINY.vocab_size, (12, TINY.block_size)),
              "validation": torch.randint(3, TINY.vocab_size, (2, TINY.block_size)),
              "test": torch.randint(3, TINY.vocab_size, (2, TINY.block_size))}
    settings = RunSettings(steps=5, batch_size=2, eval_every=100, eval_blocks=1, final_eval_blocks=1)
    seen = {}
    for seed, name in [(0, "llama"), (0, "hope_titans"), (1, "gated_deltanet")]:
        torch.manual_seed(seed)
        model = build_model(name, TINY, 64)
        batches = seen[(seed, name)] = []
        model.register_forward_pre_hook(
            lambda module, args, kwargs, batches=batches: batches.append(kwargs.get("input_ids", args[0] if args else None).clone())
            if module.training else None, with_kwargs=True)
        result = train_lm(model, blocks, settings, progress=False)
        assert result["steps_run"] == 5 and math.isfinite(result["final_test_loss"])
    runs = list(seen.values())
    assert all(len(r) == 5 for r in runs)
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))
    expected = [blocks["train"][i] for i in batch_order(12, 5, 2)]
    assert all(torch.equal(a, b) for a, b in zip(runs[0], expected))


TINY_ARGS = ["--hidden-size", "32", "--num-layers", "2", "--num-heads", "2", "--vocab-size", "300", "--block-size", "32",
             "--target-non-embedding", "40000", "--titans-chunk-size", "16", "--eval-every", "2", "--eval-blocks", "2",
             "--final-eval-blocks", "4", "--no-progress"]


@pytest.fixture
def small_corpus(tmp_path):
    """The first 80 English chapters as a .txt corpus (one document a line): a fast tokenizer."""
    path = tmp_path / "small.txt"
    path.write_text("\n".join(corpora.text_lines(corpora.corpus_text("english"))[:80]))
    return str(path)


def test_comparison_end_to_end_tunes_each_model_then_runs_seeds(tmp_path, small_corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output goes under outputs/ of the working directory
    run_lm_comparison.main(["--corpus", small_corpus, "--steps", "3", "--seeds", "0", "1", "--learning-rates", "1e-3",
                            "3e-3", "1e-2", "--max-rates", "4", *TINY_ARGS])
    output = tmp_path / "outputs" / "lm_comparison_small_tiny.json"
    payload = json.loads(output.read_text())
    assert list(payload)[: len(HEADER)] == list(HEADER)
    assert payload["command"].startswith("python -m evaluation.lm.run_lm_comparison --corpus")
    assert output.with_suffix(".png").stat().st_size > 0
    for size in payload["parameters"].values():  # matched within 2%
        assert abs(size["non_embedding"] / 40_000 - 1) <= 0.02
    chosen = {row["model"]: row for row in payload["summary"]["chosen"]}
    assert set(chosen) == set(MODELS)
    for model, row in chosen.items():
        tried = {r["lr"]: r["final_validation_loss"] for r in payload["runs"] if r["model"] == model and r["seed"] == 0}
        assert {1e-3, 3e-3, 1e-2} <= set(tried) and len(tried) <= 4
        # chosen on validation with the first seed; the edge was extended while the cap allowed
        assert tried[row["lr"]] == min(tried.values())
        assert row["at_edge"] == (row["lr"] in (min(tried), max(tried)) and list(tried.values()).count(tried[row["lr"]]) == 1)
        assert len(tried) == 4 or not row["at_edge"]
        # the second seed runs at the chosen rate only; the test loss is reported over both seeds
        assert {r["lr"] for r in payload["runs"] if r["model"] == model and r["seed"] == 1} == {row["lr"]}
        assert row["seeds"] == [0, 1] and len(row["final_test_loss"]["values"]) == 2
    for run in payload["runs"]:
        assert run["steps_run"] == 3 and math.isfinite(run["final_test_loss"]) and math.isfinite(run["final_validation_loss"])
        assert [p["step"] for p in run["curve"]] == [0, 2, 3]
        assert abs(run["curve"][0]["validation_loss"] - math.log(300)) < 1.0  # 3 steps from a uniform start
    assert payload["model_configs"]["hope_titans"]["titans_decay_init_min"] == 0.99
    assert payload["complete"] is True
    assert payload["duration_s"] > 0 and len(payload["load_average"]) == 3
    assert payload["data"]["tokens_per_run"] == 3 * 8 * 32
    # resuming with a third seed adds one run per model asked for, at its chosen rate
    again = run_lm_comparison.main(["--corpus", small_corpus, "--steps", "3", *TINY_ARGS, "--resume", "--seeds", "0", "1",
                                    "2", "--learning-rates", "1e-3", "3e-3", "1e-2", "--max-rates", "4", "--models", "llama"])
    assert again["runs"][: len(payload["runs"])] == payload["runs"] and len(again["runs"]) == len(payload["runs"]) + 1
    assert (again["runs"][-1]["model"], again["runs"][-1]["lr"], again["runs"][-1]["seed"]) == ("llama", chosen["llama"]["lr"], 2)
    assert again["command"].count(" ; ") == 1


def test_comparison_merges_a_parallel_job(tmp_path, small_corpus):
    common = ["--corpus", small_corpus, "--steps", "2", "--seeds", "0", "--learning-rates", "1e-3", "1e-2", "--max-rates", "2",
              *TINY_ARGS]
    main = run_lm_comparison.main([*common, "--models", "llama", "--output", str(tmp_path / "a.json")])
    side = run_lm_comparison.main([*common, "--models", "hope_titans", "--output", str(tmp_path / "b.json")])
    with pytest.raises(SystemExit, match="--merge-from needs --resume"):
        run_lm_comparison.main([*common, "--models", "llama", "--merge-from", str(tmp_path / "b.json"),
                                "--output", str(tmp_path / "new.json")])
    merged = run_lm_comparison.main([*common, "--models", "llama", "--resume", "--merge-from", str(tmp_path / "b.json"),
                                     "--output", str(tmp_path / "a.json")])
    assert merged["runs"] == main["runs"] + side["runs"]  # nothing reran
    assert merged["command"] == main["command"] + " ; " + side["command"] + " ; " + merged["command"].split(" ; ")[-1]
    assert merged["duration_s"] >= main["duration_s"] + side["duration_s"]
    assert {row["model"] for row in merged["summary"]["chosen"]} == {"llama", "hope_titans"}


def search_runs(losses: dict, seed: int = 0, model: str = "m") -> list[dict]:
    return [{"model": model, "lr": lr, "seed": seed, "final_validation_loss": loss} for lr, loss in losses.items()]


def test_rate_search_tries_every_rate_then_extends_an_edge_then_adds_seeds():
    groups, rates, seeds = [{"model": "m"}], [1e-3, 3e-3, 1e-2], [0, 1, 2]

    def pending(runs, **options):
        return [(c["lr"], c["seed"]) for c in rate_search(runs, groups, rates, seeds, "final_validation_loss", **options)]

    assert pending([]) == [(1e-3, 0), (3e-3, 0), (1e-2, 0)]
    assert pending(search_runs({1e-3: 4.0})) == [(3e-3, 0), (1e-2, 0)]
    assert pending(search_runs({1e-3: 4.0, 3e-3: 3.9, 1e-2: 3.8})) == [(0.03, 0)]  # best at the top edge
    assert pending(search_runs({1e-3: 3.7, 3e-3: 3.9, 1e-2: 3.8})) == [(0.000333, 0)]  # at the bottom edge
    nan = float("nan")
    assert pending(search_runs({1e-3: nan, 3e-3: nan, 1e-2: nan})) == [(0.000333, 0)]  # all diverged: lower
    assert pending(search_runs({1e-3: 4.0, 3e-3: 3.9, 1e-2: nan})) == [(3e-3, 1), (3e-3, 2)]  # interior: seeds
    edge = search_runs({1e-3: 4.0, 3e-3: 3.9, 1e-2: 3.8, 3e-2: 3.7})
    assert pending(edge, max_rates=4) == [(3e-2, 1), (3e-2, 2)]  # the cap reached: the edge stands
    assert pending(edge + search_runs({3e-2: 3.6}, seed=1), max_rates=4) == [(3e-2, 2)]
    assert pending(edge + search_runs({3e-2: 3.6}, seed=1) + search_runs({3e-2: 3.6}, seed=2), max_rates=4) == []
    assert pending(search_runs({1e-3: 0.2, 3e-3: 0.9, 1e-2: 0.5}), higher_is_better=True) == [(3e-3, 1), (3e-3, 2)]
    # a tie with an inner rate is no edge; of equal rates the lowest is chosen
    assert pending(search_runs({1e-3: 0.99, 3e-3: 0.99, 1e-2: 0.5}), higher_is_better=True) == [(1e-3, 1), (1e-3, 2)]
    assert pending(search_runs({1e-3: 4.0, 3e-3: 3.9, 1e-2: 4.1}, model="other")) == [(1e-3, 0), (3e-3, 0), (1e-2, 0)]


def test_tuned_summary_reports_the_test_loss_of_the_rate_chosen_on_validation():
    runs = [{**r, "final_test_loss": r["final_validation_loss"] + 0.5}
            for r in search_runs({1e-3: 4.0, 3e-3: 3.8, 1e-2: 3.9}) + search_runs({3e-3: 3.6}, seed=1)
            + search_runs({1e-3: 3.0}, seed=1)]  # a run at a rate not chosen does not count
    summary = tuned_summary(runs, [{"model": "m"}, {"model": "absent"}], [0, 1], "final_validation_loss",
                            ("final_validation_loss", "final_test_loss"))
    assert [(r["lr"], r["final_validation_loss"]) for r in summary["by_rate"]] == [(1e-3, 4.0), (3e-3, 3.8), (1e-2, 3.9)]
    (row,) = summary["chosen"]
    assert row["lr"] == 3e-3 and row["at_edge"] is False and row["seeds"] == [0, 1]
    assert row["final_test_loss"]["mean"] == pytest.approx(4.2) and row["final_test_loss"]["std"] == pytest.approx(0.1414, abs=1e-3)


def chosen_row(payload, model, label):
    return next(r for r in payload["summary"]["chosen"] if (r["model"], r["optimizer_label"]) == (model, label))


def test_optimizer_sweep_end_to_end_tunes_every_setting(tmp_path, small_corpus):
    output = tmp_path / "sweep.json"
    run_optimizer_sweep.main(["--corpus", small_corpus, "--models", "hope_titans", "--steps", "2", "--seeds", "0", "1",
                              "--lrs-adamw", "1e-3", "3e-3", "--lrs-muon", "1e-2", "--lrs-m3", "1e-5", "--m3-eps", "1e-2",
                              "1e-3", "--m3-momentum-decay", "1.0", "--m3-variance", "sum", "--max-rates", "2",
                              "--batch-size", "2", "--output", str(output), *TINY_ARGS])
    payload = json.loads(output.read_text())
    labels = {r["optimizer_label"] for r in payload["summary"]["chosen"]}
    assert labels == {"adamw", "muon", "m3 eps=0.01", "m3 eps=0.001"}
    assert len(payload["runs"]) == (2 + 1) + 3 * (1 + 1)  # adamw: two rates, then seed 1; the others: one rate
    for label in labels:
        row = chosen_row(payload, "hope_titans", label)
        tried = {r["lr"]: r["final_validation_loss"] for r in payload["runs"]
                 if r["optimizer_label"] == label and r["seed"] == 0}
        assert tried[row["lr"]] == min(tried.values())  # chosen on validation with the first seed
        assert row["seeds"] == [0, 1] and all(math.isfinite(v) for v in row["final_test_loss"]["values"])
        seed_1 = [r for r in payload["runs"] if r["optimizer_label"] == label and r["seed"] == 1]
        assert [r["lr"] for r in seed_1] == [row["lr"]]
        assert all(r["optimizer"]["lr"] == r["lr"] for r in seed_1)
    assert {r["optimizer"]["adamw_lr"] for r in payload["runs"] if r["optimizer_label"] == "adamw"} == {1e-3, 3e-3}
    assert {r["optimizer"]["adamw_lr"] for r in payload["runs"] if r["optimizer_label"] != "adamw"} == {3e-3}
    # the same initial weights and data for a seed: different optimizers start from the same validation loss
    starts = {r["curve"][0]["validation_loss"] for r in payload["runs"] if r["seed"] == 0}
    assert len(starts) == 1
    assert output.with_suffix(".png").stat().st_size > 0


def test_optimizer_sweep_resumes_and_merges(tmp_path, small_corpus):
    output, side = tmp_path / "sweep.json", tmp_path / "side.json"
    common = ["--corpus", small_corpus, "--steps", "2", "--optimizers", "adamw", "--batch-size", "2",
              "--lrs-adamw", "1e-3", "3e-3", "--max-rates", "2", *TINY_ARGS]
    first = run_optimizer_sweep.main([*common, "--models", "llama", "--seeds", "0", "--output", str(output)])
    older = json.loads(output.read_text())  # as written before OptimizerSpec had m3_momentum_decay
    for run in older["runs"]:
        del run["optimizer"]["m3_momentum_decay"]
    output.write_text(json.dumps(older))
    parallel = run_optimizer_sweep.main([*common, "--models", "hope_titans", "--seeds", "0", "1", "--output", str(side)])
    second = run_optimizer_sweep.main([*common, "--models", "llama", "--resume", "--seeds", "0", "1",
                                       "--merge-from", str(side), "--output", str(output)])
    llama_rate = chosen_row(second, "llama", "adamw")["lr"]
    assert [(r["model"], r["seed"], r["lr"]) for r in second["runs"]] == [
        ("llama", 0, 1e-3), ("llama", 0, 3e-3), *[(r["model"], r["seed"], r["lr"]) for r in parallel["runs"]],
        ("llama", 1, llama_rate)]
    for kept, old in zip(second["runs"][:2], older["runs"]):  # kept, not rerun; the new field at its default
        assert kept == {**old, "optimizer": {**old["optimizer"], "m3_momentum_decay": 1.0}}
    assert second["command"].count(" ; ") == 2 and second["duration_s"] > first["duration_s"] + parallel["duration_s"]
    assert {row["model"] for row in second["summary"]["chosen"]} == {"llama", "hope_titans"}
    with pytest.raises(SystemExit, match="shape"):
        run_optimizer_sweep.main([*common[:-len(TINY_ARGS)], "--models", "llama", "--resume", "--seeds", "2",
                                  "--output", str(output)])


@pytest.mark.parametrize("name", ["llama", "hope_titans"])
def test_gradient_accumulation_matches_the_whole_batch(name):
    torch.manual_seed(0)
    model = build_model(name, TINY, 64)
    batch = torch.randint(3, TINY.vocab_size, (4, TINY.block_size))
    grads = []
    for micro in (1, 2):
        model.zero_grad()
        loss = accumulate_gradients(model, batch, micro, "cpu")
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="gradient_accumulation"):
        accumulate_gradients(model, batch, 3, "cpu")


def test_m3_momentum_decay_axis():
    args = run_optimizer_sweep.parse_args(["--optimizers", "m3", "--m3-eps", "1e-2", "1e-3", "--m3-momentum-decay", "1.0",
                                           "0.95", "--m3-variance", "sum"])
    specs = run_optimizer_sweep.optimizer_settings(args)
    assert sorted(run_optimizer_sweep.label(asdict(s)) for s in specs) == [
        "m3 eps=0.001", "m3 eps=0.001 decay=0.95", "m3 eps=0.01", "m3 eps=0.01 decay=0.95"]
    with_ema = run_optimizer_sweep.optimizer_settings(run_optimizer_sweep.parse_args(
        ["--optimizers", "m3", "--m3-eps", "1e-2", "--m3-momentum-decay", "1.0", "--m3-variance", "sum", "ema"]))
    assert [run_optimizer_sweep.label(asdict(s)) for s in with_ema] == ["m3 eps=0.01", "m3 eps=0.01 variance=ema"]
    (ema,) = make_optimizers(build_model("hope_titans", TINY, 64), run_optimizer_sweep.with_lr(with_ema[1], 1e-3))
    assert ema.param_groups[0]["variance"] == "ema" and ema.param_groups[1]["algorithm"] == "adamw"
    model = build_model("hope_titans", TINY, 64)
    decayed = run_optimizer_sweep.with_lr(next(s for s in specs if s.m3_momentum_decay == 0.95), 1e-3)
    assert (decayed.lr, decayed.adamw_lr) == (1e-3, 3e-3)  # M3's AdamW part keeps --adamw-lr
    (m3,) = make_optimizers(model, decayed)
    assert [level["decay"] for level in m3.param_groups[0]["levels"]] == [0.95, 0.95]
    # decay 1.0 is Algorithm 1: M3's default levels with momentum_decay=1.0
    (algorithm_1,) = make_optimizers(model, run_optimizer_sweep.with_lr(next(s for s in specs if s.m3_momentum_decay == 1.0), 1e-3))
    reference = M3([{"params": [torch.zeros(2, 2)]}], lr=1e-3, momentum_decay=1.0)
    assert reference.param_groups[0]["levels"] == algorithm_1.param_groups[0]["levels"]


@pytest.mark.parametrize("optimizer", ["adamw", "muon", "m3"])
def test_parameters_marked_no_weight_decay_are_not_decayed(optimizer):
    """fla's rule for a Gated DeltaNet's A_log and dt_bias: with zero gradients, only weight decay moves a weight."""
    torch.manual_seed(0)
    model = build_model("gated_deltanet", TINY, 64)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    for opt in make_optimizers(model, OptimizerSpec(name=optimizer, lr=1e-2, adamw_lr=1e-2, weight_decay=0.5)):
        opt.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(p, before[name])
        assert moved != name.endswith(("A_log", "dt_bias")), name


def test_m3_without_a_second_moment_searches_from_its_own_rates():
    args = run_optimizer_sweep.parse_args(["--optimizers", "m3", "--m3-variance", "sum", "none",
                                           "--m3-momentum-decay", "0.95"])
    specs = run_optimizer_sweep.optimizer_settings(args)
    rates = {run_optimizer_sweep.label(asdict(s)): run_optimizer_sweep.first_rates(args, s) for s in specs}
    assert rates == {"m3 eps=1e-05 decay=0.95": [3e-6, 1e-5, 3e-5],
                     "m3 eps=1e-05 decay=0.95 variance=none": [1e-3, 3e-3, 1e-2]}
    (m3,) = make_optimizers(build_model("hope_titans", TINY, 64), run_optimizer_sweep.with_lr(specs[1], 1e-3))
    assert m3.param_groups[0]["variance"] == "none" and m3.param_groups[0]["lr"] == 1e-3
