"""MQAR (Zoology): the generator's layout, answerers that show the task needs recall (oracle 1.0;
elimination and copying at chance), the Gated DeltaNet baseline against fla's reference, every
mixer variant in a short training run, and the sweep script end to end (sanity gate included)."""

import json

import pytest
import torch

from evaluation.lib.results import HEADER
from evaluation.mqar import run_mqar_sweep as sweep
from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.evaluation.mqar import (
    IGNORE_INDEX,
    MIXER_VARIANTS,
    MQARTask,
    answer_accuracy,
    copy_answers,
    elimination_answers,
    evaluate_mqar,
    guess_accuracy,
    make_mqar_batch,
    mqar_model,
    mqar_model_config,
    oracle_answers,
    train_mqar,
)
from hope_hf.modeling.gated_deltanet_baseline import GatedDeltaNetMixer, gated_delta_rule


def test_batches_put_pairs_first_queries_later_and_answers_only_in_labels():
    task = MQARTask(vocab_size=64, seq_len=48, num_kv_pairs=6)
    input_ids, labels = make_mqar_batch(task, 32, torch.Generator().manual_seed(0))
    again, _ = make_mqar_batch(task, 32, torch.Generator().manual_seed(0))
    other, _ = make_mqar_batch(task, 32, torch.Generator().manual_seed(1))
    assert torch.equal(input_ids, again) and not torch.equal(input_ids, other)
    assert input_ids.shape == labels.shape == (32, 48)
    n = task.num_kv_pairs
    for ids, lab in zip(input_ids.tolist(), labels.tolist()):
        keys, values = ids[0:2 * n:2], ids[1:2 * n:2]
        assert len(set(keys)) == n and len(set(values)) == n
        assert all(1 <= k < 32 for k in keys) and all(32 <= v < 64 for v in values)
        pairs = dict(zip(keys, values))
        answer_positions = [t for t, label in enumerate(lab) if label != IGNORE_INDEX]
        assert len(answer_positions) == n and min(answer_positions) > 2 * n
        assert sorted(ids[t - 1] for t in answer_positions) == sorted(keys)  # every key asked once
        for t in answer_positions:
            assert lab[t] == pairs[ids[t - 1]] and ids[t] == 0  # the answer is never an input
        query_region = ids[2 * n:]
        assert set(query_region) <= {0, *keys} and not set(query_region) & set(values)
        assert all((t - 2 * n) % 2 == 1 for t in answer_positions)  # queries on even offsets, as Zoology
    with pytest.raises(ValueError, match="seq_len must be >= 4 \\* num_kv_pairs"):
        MQARTask(vocab_size=64, seq_len=20, num_kv_pairs=6)
    with pytest.raises(ValueError, match="num_kv_pairs must be < vocab_size // 2"):
        MQARTask(vocab_size=16, seq_len=64, num_kv_pairs=8)
    with pytest.raises(ValueError, match="power_a must be in"):
        MQARTask(power_a=0.0)


def test_query_gaps_follow_a_power_law():
    """power_a = 0.01 puts most queries near the pairs; power_a = 1 spreads them uniformly."""
    def mean_gap(power_a):
        task = MQARTask(vocab_size=64, seq_len=256, num_kv_pairs=4, power_a=power_a)
        _, labels = make_mqar_batch(task, 256, torch.Generator().manual_seed(0))
        positions = (labels != IGNORE_INDEX).nonzero()[:, 1].float()
        return ((positions - 1 - 8) / 2).mean().item()  # gap index in [0, 124)
    assert mean_gap(0.01) < 30 < 50 < mean_gap(1.0)


def test_only_recall_beats_chance():
    """Oracle lookup scores 1; answering by elimination or by copying a value seen scores 1/N
    (tolerance 0.03 on 4096 answers, std ~0.005). With the answers written into the input (the
    old layout), elimination scores mean(1/k, k=1..N) = 0.34: the test can tell."""
    task = MQARTask(vocab_size=128, seq_len=64, num_kv_pairs=8)
    input_ids, labels = make_mqar_batch(task, 512, torch.Generator().manual_seed(0))
    n, generator = task.num_kv_pairs, torch.Generator().manual_seed(1)
    assert guess_accuracy(oracle_answers(input_ids, labels, n), labels) == 1.0
    chance = 1 / n
    assert guess_accuracy(elimination_answers(input_ids, labels, n, generator), labels) == pytest.approx(chance, abs=0.03)
    assert guess_accuracy(copy_answers(input_ids, labels, n, generator), labels) == pytest.approx(chance, abs=0.03)

    leaky = torch.where(labels != IGNORE_INDEX, labels, input_ids)
    harmonic = sum(1 / k for k in range(1, n + 1)) / n
    assert guess_accuracy(elimination_answers(leaky, labels, n, generator), labels) == pytest.approx(harmonic, abs=0.03)


def test_answer_accuracy_reads_the_prediction_at_the_query_key():
    task = MQARTask(vocab_size=64, seq_len=32, num_kv_pairs=4)
    input_ids, labels = make_mqar_batch(task, 8, torch.Generator().manual_seed(0))
    perfect = torch.nn.functional.one_hot(labels.roll(-1, dims=1).clamp(min=0), 64).float()
    assert answer_accuracy(perfect, labels) == 1.0
    assert answer_accuracy(torch.zeros_like(perfect), labels) == 0.0


@pytest.mark.parametrize("d_v", [8, 16], ids=["expand_v-1", "expand_v-2"])
def test_gated_deltanet_matches_fla_reference(d_v):
    naive = pytest.importorskip("fla.ops.gated_delta_rule.naive")
    B, T, H, d = 2, 37, 3, 8
    q, k = (torch.nn.functional.normalize(torch.randn(B, T, H, d), dim=-1) for _ in range(2))
    v, beta, g = torch.randn(B, T, H, d_v), torch.rand(B, T, H), -torch.rand(B, T, H)
    expected, _ = naive.naive_recurrent_gated_delta_rule(q, k, v, beta, g)
    torch.testing.assert_close(gated_delta_rule(q, k, v, beta, g), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("hidden, heads, expand_v", [(128, 4, 2), (96, 3, 1)])
def test_gated_deltanet_mixer_has_fla_layers_parameters(hidden, heads, expand_v):
    """The same weights as fla's GatedDeltaNet layer (its three short convs are one depthwise conv
    here), and the same parameters exempt from weight decay."""
    layers = pytest.importorskip("fla.layers")
    fla = layers.GatedDeltaNet(hidden_size=hidden, num_heads=heads, head_dim=hidden // heads, expand_v=expand_v, conv_size=4)
    config = HopeConfig(hidden_size=hidden, num_attention_heads=heads, num_hidden_layers=1, vocab_size=32, titans_conv_size=4)
    ours = GatedDeltaNetMixer(config, 0, expand_v=expand_v)
    theirs = dict(fla.named_parameters())
    convs = [theirs.pop(f"{x}_conv1d.weight") for x in "qkv"]
    assert {n: tuple(p.shape) for n, p in ours.named_parameters() if n != "conv1d.weight"} == {n: tuple(p.shape) for n, p in theirs.items()}
    assert ours.conv1d.weight.shape == torch.cat(convs).shape
    assert {n for n, p in ours.named_parameters() if getattr(p, "_no_weight_decay", False)} == {"A_log", "dt_bias"}
    with pytest.raises(ValueError, match="expand_v"):
        GatedDeltaNetMixer(config, 0, expand_v=1.01)


@pytest.mark.parametrize("variant", list(MIXER_VARIANTS))
def test_every_variant_builds_and_differs_only_in_the_mixer(variant):
    task = MQARTask(vocab_size=32, seq_len=32, num_kv_pairs=4)
    model = mqar_model(variant, task, hidden_size=32, num_layers=2, head_dim=16)
    mixers = [type(layer.mixer).__name__ for layer in model.model.layers]
    expected = {"attention": ["LlamaAttention"] * 2, "gated_deltanet": ["GatedDeltaNetMixer"] * 2,
                "titans": ["HopeTitansMixer"] * 2, "titans_static": ["HopeTitansMixer"] * 2,
                "hybrid": ["HopeTitansMixer", "LlamaAttention"]}[variant]
    assert mixers == expected
    assert all(type(layer.cms).__name__ == "ContinuumMemorySystem" for layer in model.model.layers)
    input_ids, labels = make_mqar_batch(task, 2, torch.Generator().manual_seed(0))
    loss = model(input_ids, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="variant must be one of"):
        mqar_model_config("mamba", task)


def test_training_lowers_the_loss_and_is_deterministic():
    task = MQARTask(vocab_size=32, seq_len=32, num_kv_pairs=4)
    config = mqar_model_config("attention", task, hidden_size=32, num_layers=1)
    kwargs = dict(steps=30, batch_size=16, learning_rate=1e-2, eval_every=15, eval_examples=64, seed=0, progress=False)
    run = train_mqar(config, task, **kwargs)
    first, last = sum(run["train_loss"][:5]) / 5, sum(run["train_loss"][-5:]) / 5
    assert last < first - 0.3, run["train_loss"]
    assert [e["step"] for e in run["eval"]] == [0, 15, 30] and run["steps_run"] == 30
    assert run["eval"][-1]["loss"] < run["eval"][0]["loss"] - 0.3
    trained = []
    repeat = train_mqar(lambda: trained.append(HopeForCausalLM(config)) or trained[0], task, **kwargs)
    assert repeat["train_loss"] == run["train_loss"] and repeat["eval"] == run["eval"]
    # validation (every evaluation point) and test (the trained model, once) come from their own generators
    validation, test = (make_mqar_batch(task, 64, torch.Generator().manual_seed(s)) for s in (1_000_003, 2_000_003))
    assert not torch.equal(validation[0], test[0])
    assert evaluate_mqar(trained[0], *validation)["accuracy"] == run["eval"][-1]["accuracy"] == run["final_accuracy"]
    assert evaluate_mqar(trained[0], *test)["accuracy"] == run["test_accuracy"] == repeat["test_accuracy"]
    early = train_mqar(config, task, **{**kwargs, "eval_every": 5}, stop_at_accuracy=0.0)
    assert early["steps_run"] == 5 and [e["step"] for e in early["eval"]] == [0, 5]


def test_titans_init_fields_set_the_initial_memories_rates_and_decays():
    config = HopeConfig(vocab_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        titans_memory_init_std=0.3, titans_decay_init_min=0.95, titans_decay_init_max=0.99,
                        titans_eta_init=0.8)
    torch.manual_seed(0)
    mixer = HopeForCausalLM(config).model.layers[0].mixer
    assert 0.25 < mixer.initial_state.std().item() < 0.35
    torch.testing.assert_close(torch.sigmoid(mixer.b_alpha), torch.linspace(0.95, 0.99, 4))
    torch.testing.assert_close(torch.sigmoid(mixer.b_eta), torch.full((4,), 0.8))
    default = HopeForCausalLM(HopeConfig(vocab_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=4))
    assert default.model.layers[0].mixer.initial_state.std().item() < 0.03
    for fields, message in [(dict(titans_memory_init_std=-1.0), "titans_memory_init_std"),
                            (dict(titans_decay_init_min=1.0), "titans_decay_init_min"),
                            (dict(titans_eta_init=0.0), "titans_eta_init"),
                            (dict(titans_decay_init_min=0.99, titans_decay_init_max=0.95), "must be <=")]:
        with pytest.raises(ValueError, match=message):
            HopeConfig(**fields)


TINY_SWEEP = ["--vocab-size", "32", "--widths", "16", "--ablation-widths", "16", "--head-dim", "8", "--num-layers", "1",
              "--steps", "2", "--eval-every", "1", "--eval-examples", "8", "--sanity", "16", "16", "2", "1e-3",
              "--sanity-steps", "2"]


def test_sweep_tunes_each_cell_on_validation_reports_test_and_refuses_without_sanity(tmp_path):
    tiny = [*TINY_SWEEP, "--tasks", "16x2", "--learning-rates", "1e-3", "3e-3", "1e-2", "--max-rates", "4", "--seeds", "0", "1"]
    report = sweep.main(tiny + ["--variants", "gated_deltanet", "titans_init_std_0.1", "--sanity-accuracy", "0.0",
                                "--output", str(tmp_path / "sweep.json")])
    assert report["sanity"]["passed"] and report["command"].startswith("python -m evaluation.mqar.run_mqar_sweep ")
    chosen = {row["variant"]: row for row in report["summary"]["chosen"]}
    assert set(chosen) == {"gated_deltanet", "titans_init_std_0.1"}
    for variant, row in chosen.items():
        mine = [r for r in report["runs"] if r["variant"] == variant]
        tried = {r["learning_rate"]: r["accuracy"] for r in mine if r["seed"] == 0}
        assert {1e-3, 3e-3, 1e-2} <= set(tried) and len(tried) <= 4
        assert tried[row["learning_rate"]] == max(tried.values())  # chosen on validation accuracy
        assert {r["learning_rate"] for r in mine if r["seed"] == 1} == {row["learning_rate"]}
        assert row["test_accuracy"]["values"] == [r["test_accuracy"] for r in mine if r["learning_rate"] == row["learning_rate"]]
    assert next(r for r in report["runs"] if r["variant"] == "titans_init_std_0.1")["overrides"] == {"titans_memory_init_std": 0.1}
    assert json.loads((tmp_path / "sweep.json").read_text())["summary"] == report["summary"]
    assert (tmp_path / "sweep.png").stat().st_size > 1000

    again = sweep.main(tiny + ["--variants", "titans", "--sanity-accuracy", "0.0", "--seeds", "0",
                               "--sanity-from", str(tmp_path / "sweep.json"), "--output", str(tmp_path / "again.json")])
    assert again["sanity"]["eval"] == report["sanity"]["eval"] and again["sanity"]["reused_from"].endswith("sweep.json")
    resumed = sweep.main(tiny + ["--variants", "titans", "--sanity-accuracy", "0.0", "--seeds", "0", "1",
                                 "--resume", "--output", str(tmp_path / "again.json")])
    assert resumed["runs"][: len(again["runs"])] == again["runs"]  # nothing reran; seed 1 added at the chosen rate
    assert [r["seed"] for r in resumed["runs"][len(again["runs"]):]] == [1]
    assert resumed["command"].count("evaluation.mqar.run_mqar_sweep") == 2
    with pytest.raises(SystemExit, match="does not match"):
        sweep.main(tiny + ["--sanity", "16", "16", "2", "3e-3", "--sanity-from", str(tmp_path / "sweep.json"),
                           "--output", str(tmp_path / "other.json")])
    with pytest.raises(SystemExit) as refused:
        sweep.main(tiny + ["--variants", "titans", "--sanity-accuracy", "1.01", "--output", str(tmp_path / "no.json")])
    assert refused.value.code == 2
    assert json.loads((tmp_path / "no.json").read_text())["runs"] == [] and not (tmp_path / "no.png").exists()


@pytest.mark.parametrize("width", [64, 128])
def test_every_variant_is_matched_to_titans_within_two_percent(width):
    args = sweep.parse_args(["--widths", str(width)])
    task = MQARTask()
    target = sweep.parameter_count(args, "titans", task, width)
    for variant in [*MIXER_VARIANTS, *sweep.ABLATIONS]:
        mlp = sweep.matched_mlp(args, variant, task, width)
        assert abs(sweep.parameter_count(args, variant, task, width, mlp) / target - 1) <= 0.02, variant
    assert sweep.matched_mlp(args, "titans", task, width) == 2 * width  # the reference keeps its MLP
    with pytest.raises(ValueError, match="gated_deltanet at width .* within 0%"):
        sweep.matched_mlp(args, "gated_deltanet", task, width, tolerance=0.0)


def test_sweep_merges_a_parallel_sweep_and_plots_every_task(tmp_path):
    common = [*TINY_SWEEP, "--learning-rates", "1e-3", "--seeds", "0", "--sanity-accuracy", "0.0"]
    main = sweep.main(common + ["--tasks", "16x2", "--variants", "attention", "--output", str(tmp_path / "main.json")])
    side = sweep.main(common + ["--tasks", "24x3", "--variants", "titans", "--sanity-from", str(tmp_path / "main.json"),
                                "--output", str(tmp_path / "side.json")])
    with pytest.raises(SystemExit, match="needs --resume"):
        sweep.main(common + ["--merge-from", str(tmp_path / "side.json"), "--output", str(tmp_path / "new.json")])
    merged = sweep.main(common + ["--tasks", "24x3", "--variants", "titans", "--resume", "--merge-from", str(tmp_path / "side.json"),
                                  "--output", str(tmp_path / "main.json")])
    assert merged["runs"] == main["runs"] + side["runs"]  # the side's titans cell is not rerun
    assert merged["command"] == main["command"] + " ; " + side["command"] + " ; " + merged["command"].split(" ; ")[-1]
    assert merged["duration_s"] >= main["duration_s"] + side["duration_s"]
    assert {(row["seq_len"], row["num_kv_pairs"]) for row in merged["summary"]["chosen"]} == {(16, 2), (24, 3)}


def test_every_ablation_runs_in_the_sweep(tmp_path):
    """Ablations that set a field the sweep also sets (the chunk size) override it instead of failing."""
    report = sweep.main([*TINY_SWEEP, "--tasks", "16x2", "--steps", "1", "--learning-rates", "1e-3", "--seeds", "0",
                         "--sanity-accuracy", "0.0", "--variants", *sweep.ABLATIONS, "--output", str(tmp_path / "ablations.json")])
    assert [r["variant"] for r in report["runs"]] == list(sweep.ABLATIONS)
    assert {r["variant"]: r["overrides"] for r in report["runs"]} == sweep.ABLATIONS


def test_a_default_sweep_writes_under_outputs_with_the_results_header(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = sweep.main([*TINY_SWEEP, "--tasks", "16x2", "--steps", "1", "--learning-rates", "1e-3", "--seeds", "0",
                         "--sanity-accuracy", "0.0", "--variants", "attention"])
    saved = json.loads((tmp_path / "outputs" / "mqar_sweep.json").read_text())
    assert list(saved)[: len(HEADER)] == list(HEADER) and saved == report
    assert {"sanity", "summary", "runs"} <= set(saved) and (tmp_path / "outputs" / "mqar_sweep.png").exists()
