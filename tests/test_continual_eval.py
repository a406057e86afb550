"""The forgetting study (python -m evaluation.continual.run_forgetting) on a tiny random Llama: all five
strategies run and report finite numbers and curves on the same tokens, each trains exactly what
it says it trains, and the learning rate is chosen by distance to the target."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from evaluation.continual import run_forgetting
from evaluation.lib.results import HEADER
from hope_hf.data import sample_text_path
from hope_hf.modeling.llama_loading import load_plain_llama
from hope_hf.training import train_bpe_tokenizer
from hope_hf.training.continual import perplexity

PERIOD = 3  # level 0's period in (b)
LEVEL0 = (".mlp.gate_proj.", ".mlp.up_proj.", ".mlp.down_proj.")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random Llama directory with its tokenizer, and new / old domain text files."""
    folder = tmp_path_factory.mktemp("continual")
    spanish = sample_text_path("rv1909_es_sample").read_text().splitlines()[:6]
    english = sample_text_path("web_en_sample").read_text().splitlines()[:8]  # >= 2 held out (validation, test)
    tokenizer = train_bpe_tokenizer(spanish + english, 300)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         eos_token_id=tokenizer.eos_token_id))
    llama.save_pretrained(folder / "llama")
    tokenizer.save_pretrained(folder / "llama")
    (folder / "new.txt").write_text("\n".join(spanish) + "\n")
    (folder / "old.txt").write_text("\n".join(english) + "\n")
    return folder


def common_args(folder: Path, out: Path, *extra) -> list[str]:
    return ["--model", str(folder / "llama"), "--data", str(folder / "new.txt"), "--old-data", str(folder / "old.txt"),
            "--block-size", "32", "--batch-size", "2", "--eval-blocks", "4", "--test-tokens", "128", "--new-level-size", "16",
            "--pretrained-period", str(PERIOD), "--slow-level-period", str(PERIOD), "--warmup-steps", "0",
            "--eval-every", "1", "--lora-rank", "2", "--output-dir", str(out / "runs"),
            "--output", str(out / "continual_forgetting.json"), *extra]


def level0_name(name: str) -> str:
    """The pretrained MLP projection a new level's gate / up is warm-started from."""
    return re.sub(r"\.levels\.\d+\.", ".", name)


def changed(llama, model) -> dict[str, bool]:
    """Every parameter of ``model``: True where it differs from where it started (the Llama's
    weights, or for new CMS tensors their initial state: zeros / ones / the Llama's rows)."""
    source = dict(llama.named_parameters())
    out = {}
    for name, p in model.named_parameters():
        if name in source:
            out[name] = not torch.equal(p, source[name])
        elif ".mlp.levels." in name and "down_proj" in name:
            out[name] = bool(p.abs().sum() > 0)  # starts at zero
        elif ".mlp.levels." in name:  # gate / up: warm-started from the pretrained MLP's first rows
            rows = source[level0_name(name)][: p.shape[0]]
            out[name] = not torch.equal(p, rows)
        elif ".mlp.norms." in name:
            out[name] = not torch.equal(p, torch.ones_like(p))
        else:
            raise AssertionError(f"unexpected parameter {name}")
    return out


def lora_changed(llama, model) -> dict[str, bool]:
    """LoRA: every base weight against the Llama's, every adapter against its start (B = 0)."""
    source = dict(llama.named_parameters())
    out = {}
    for name, p in model.named_parameters():
        if "lora_B" in name:
            out[name] = bool(p.abs().sum() > 0)
        elif "lora_A" not in name:
            out[name] = not torch.equal(p, source[name.removeprefix("base_model.model.").replace(".base_layer.", ".")])
    return out


def run_study(setup, out: Path, *extra):
    """Run the script's main; returns (results, {(strategy, seed): which parameters changed},
    {(strategy, seed): trained model's state dict})."""
    llama = load_plain_llama(setup / "llama")
    diffs, states = {}, {}

    def inspect(record, model, validation, test):
        key = (record["strategy"], record["seed"])
        diffs[key] = (lora_changed if record["strategy"] == "lora" else changed)(llama, model)
        states[key] = model.state_dict()
        # the reported perplexities after training are those of the trained model, on every domain:
        # "after" on the first --test-tokens (4 blocks of 32) of the test split, "validation_after" on 4 validation blocks
        for domain in test:
            assert len(validation[domain]) == 4 and len(test[domain]) * 32 == 128
            assert record["after"][domain] == pytest.approx(perplexity(model, test[domain], len(test[domain]), 1), rel=1e-5)
            assert record["validation_after"][domain] == pytest.approx(perplexity(model, validation[domain], 2, 2), rel=1e-5)

    results = run_forgetting.main(common_args(setup, out, *extra), on_trained=inspect)
    return llama, results, diffs, states


@pytest.fixture(scope="module")
def study(setup, tmp_path_factory):
    """All five strategies, two seeds, PERIOD - 1 steps, one learning rate."""
    out = tmp_path_factory.mktemp("study")
    return out, *run_study(setup, out, "--max-steps", str(PERIOD - 1), "--seeds", "0", "1", "--lr-sweep", "1e-3")


def test_all_strategies_write_finite_results_and_curves_on_the_same_tokens(setup, study):
    out, llama, results, _, _ = study
    saved = json.loads((out / "continual_forgetting.json").read_text())
    assert saved["complete"] and saved["summary"] == json.loads(json.dumps(results["summary"]))
    assert (out / "continual_forgetting.png").stat().st_size > 0
    assert saved["command"].startswith("python -m evaluation.continual.run_forgetting --model ")
    runs = saved["runs"]
    strategies = list(run_forgetting.STRATEGIES)
    assert [(r["strategy"], r["seed"]) for r in runs] == [(s, seed) for seed in (0, 1) for s in strategies]
    assert saved["chosen_learning_rates"] == {s: 1e-3 for s in strategies}
    assert saved["target_perplexity"] == pytest.approx(saved["validation_before"]["new"] / 2)  # chosen on validation
    assert "test split" in saved["measured_on"]["before_after_gain_rise"]
    assert saved["measured_on"]["test_tokens"] == saved["settings"]["test_tokens_per_domain"]
    assert all(t >= 128 and t % 32 == 0 for t in saved["measured_on"]["test_tokens"].values())
    steps = PERIOD - 1
    for r in runs:
        for when in ("before", "after", "validation_before", "validation_after"):
            assert list(r[when]) == ["new", "old"]
            assert all(math.isfinite(v) and v > 1 for v in r[when].values())
        assert r["before"] == saved["before"] and r["validation_before"] == saved["validation_before"]
        for domain, curve in r["curves"].items():  # validation: step 0 the pretrained model, the last point "after"
            assert [step for step, _ in curve] == list(range(steps + 1))
            assert curve[0][1] == r["validation_before"][domain] and curve[-1][1] == r["validation_after"][domain]
        assert r["old_domain_rise"]["old"] == pytest.approx(r["after"]["old"] / r["before"]["old"] - 1)
        assert r["new_domain_gain"] == pytest.approx(r["before"]["new"] / r["after"]["new"])
        assert r["steps"] == steps and r["tokens"] == steps * 2 * 32
        run_dir = out / "runs" / r["strategy"] / "lr_0.001" / f"seed_{r['seed']}"
        assert (run_dir / "train_log.jsonl").exists() and not (run_dir / "checkpoints").exists()
    # same tokens in the same order for every strategy of one seed; another seed reads another order
    orders = {seed: {r["data_order_sha256"] for r in runs if r["seed"] == seed} for seed in (0, 1)}
    assert len(orders[0]) == len(orders[1]) == 1 and orders[0] != orders[1]
    by = {r["strategy"]: r for r in runs if r["seed"] == 0}
    llama_params = sum(p.numel() for p in llama.parameters())
    new_level = 2 * 3 * 32 * 16  # two layers, gate/up/down of 32 x 16
    assert by["full_finetune"]["trainable_parameters"] == by["full_finetune"]["total_parameters"] == llama_params
    assert by["cms_slow_level0"]["trainable_parameters"] == by["cms_slow_level0"]["total_parameters"] > llama_params + new_level
    assert by["cms_frozen"]["trainable_parameters"] == new_level
    assert by["cms_multi"]["trainable_parameters"] == 2 * new_level
    lora = 2 * 2 * (4 * (32 + 32) + 2 * (32 + 64) + (64 + 32))  # rank 2: q,k,v,o 32x32; gate, up 32->64; down 64->32
    lora -= 2 * 2 * 2 * 16  # k and v map 32 -> 16 (2 key-value heads of 8)
    assert by["lora"]["trainable_parameters"] == lora
    assert set(saved["summary"]) == set(strategies)
    full_rise = saved["summary"]["full_finetune"]["old_domain_rise"]["old"]["mean"]
    # a ratio only where full fine-tuning forgot (its rise > 0); the tiny random model may not
    expected = pytest.approx(1.0) if full_rise > 0 else None
    assert saved["summary"]["full_finetune"]["rise_vs_full_finetune"]["old"] == expected


def test_full_finetune_changes_every_parameter(study):
    _, llama, _, diffs, _ = study
    for seed in (0, 1):
        diff = diffs["full_finetune", seed]
        assert set(diff) == {n for n, _ in llama.named_parameters()}
        assert all(diff.values()), [n for n, c in diff.items() if not c]


def check_only_new_levels(diff: dict, llama, state: dict, moved: set[str]) -> None:
    new_levels = {n for n in diff if ".mlp.levels." in n}
    assert new_levels and all(diff[n] == any(f".levels.{i}." in n for i in moved) for n in new_levels), diff
    assert not any(c for n, c in diff.items() if n not in new_levels), [n for n, c in diff.items() if c and n not in new_levels]
    assert all(torch.equal(state[k], v) for k, v in llama.state_dict().items())  # pretrained weights bit-identical


def test_frozen_strategies_change_only_the_new_levels(study):
    _, llama, _, diffs, states = study
    for seed in (0, 1):
        check_only_new_levels(diffs["cms_frozen", seed], llama, states["cms_frozen", seed], moved={"0"})
        # (d): the fast level (levels.0) learned; the slow one (levels.1, period PERIOD) waits for its pulse
        check_only_new_levels(diffs["cms_multi", seed], llama, states["cms_multi", seed], moved={"0"})


def test_lora_changes_only_the_adapters(study):
    _, _, _, diffs, _ = study
    for seed in (0, 1):
        diff = diffs["lora", seed]
        adapters = {n for n in diff if "lora_B" in n}
        assert len(adapters) == 2 * 7 and all(diff[n] for n in adapters)
        assert not any(c for n, c in diff.items() if n not in adapters)


def check_slow_level0(diff: dict, moved: bool) -> None:
    level0 = {n for n in diff if any(k in n for k in LEVEL0) and ".levels." not in n}
    assert len(level0) == 2 * 3
    others = set(diff) - level0
    assert all(diff[n] for n in others), [n for n in others if not diff[n]]  # everything else trains every step
    if moved:  # the pulse applied the gradients summed over the period
        assert all(diff[n] for n in level0), [n for n in level0 if not diff[n]]
    else:  # held back until the pulse
        assert not any(diff[n] for n in level0), [n for n in level0 if diff[n]]


def test_slow_level0_is_still_before_its_period(study):
    _, _, _, diffs, _ = study
    for seed in (0, 1):
        check_slow_level0(diffs["cms_slow_level0", seed], moved=False)


def test_slow_levels_move_at_their_period(setup, tmp_path):
    llama, results, diffs, states = run_study(setup, tmp_path, "--strategies", "cms_slow_level0", "cms_multi",
                                              "--seeds", "0", "--max-steps", str(PERIOD), "--lr-sweep", "1e-3")
    assert [r["steps"] for r in results["runs"]] == [PERIOD, PERIOD]
    check_slow_level0(diffs["cms_slow_level0", 0], moved=True)
    check_only_new_levels(diffs["cms_multi", 0], llama, states["cms_multi", 0], moved={"0", "1"})


def test_a_default_study_writes_under_outputs_with_the_results_header_and_resumes(setup, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = common_args(setup, tmp_path, "--strategies", "cms_frozen", "--seeds", "0", "--max-steps", "1",
                       "--lr-sweep", "1e-3")
    args = args[: args.index("--output")] + args[args.index("--output") + 2 :]
    first = run_forgetting.main(args)
    saved = json.loads((tmp_path / "outputs" / "continual_forgetting.json").read_text())
    assert list(saved)[: len(HEADER)] == list(HEADER) and saved == first and saved["complete"]
    again = run_forgetting.main(args + ["--resume"])  # nothing left to run: the run is kept, not redone
    assert again["runs"] == first["runs"] and again["command"].count(" ; ") == 1


def record(strategy, lr, seed, new_after):
    # the choice reads validation perplexity only; a test-split "after" far off must not sway it
    return {"strategy": strategy, "learning_rate": lr, "seed": seed, "validation_after": {"new": new_after},
            "after": {"new": 1e6 / new_after}}


def test_the_rate_closest_to_the_target_in_log_is_chosen_from_the_sweep_seed():
    runs = [record("a", 1e-4, 0, 50.0), record("a", 3e-4, 0, 30.0), record("a", 1e-3, 0, 19.0),
            record("a", 1e-3, 1, 40.0),  # another seed: not part of the choice
            record("b", 1e-4, 0, 41.0), record("b", 3e-4, 0, 39.5)]
    # target 40: 50 and 30 are both 10 away, but in log 50 is closer (0.22 vs 0.29)
    assert run_forgetting.choose_rates(runs, "new", 40.0, sweep_seed=0) == {"a": 1e-4, "b": 3e-4}
    assert run_forgetting.choose_rates(runs, "new", 20.0, sweep_seed=0) == {"a": 1e-3, "b": 3e-4}


def test_bad_arguments_are_rejected_naming_the_allowed_values(capsys):
    with pytest.raises(SystemExit):
        run_forgetting.parse_args(["--strategies", "full_finetune", "adapters"])
    err = capsys.readouterr().err
    assert "'adapters'" in err and all(name in err for name in run_forgetting.STRATEGIES)
    with pytest.raises(SystemExit):
        run_forgetting.parse_args(["--old-data", "french"])
    assert "allowed: spanish, english, code or a .txt file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_forgetting.parse_args(["--data", "code", "--old-data", "english", "code"])
    assert "cannot also be an old domain" in capsys.readouterr().err
    with pytest.raises(ValueError, match="allowed: full_finetune, cms_slow_level0, cms_frozen, cms_multi, lora"):
        run_forgetting.build_model("adapters", None, None)
