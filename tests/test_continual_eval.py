"""The forgetting study (evaluation/continual/run_forgetting.py) on a tiny random Llama: all three
strategies run and report finite numbers on the same tokens, and each trains exactly what it
says it trains."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hope_hf.data import sample_text_path
from hope_hf.training import train_bpe_tokenizer
from hope_hf.training.continual import load_plain_llama, perplexity

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("run_forgetting", ROOT / "evaluation" / "continual" / "run_forgetting.py")
run_forgetting = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_forgetting)

PERIOD = 3  # level 0's period in (b)
LEVEL0 = (".mlp.gate_proj.", ".mlp.up_proj.", ".mlp.down_proj.")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random Llama directory with its tokenizer, and new / old domain text files."""
    folder = tmp_path_factory.mktemp("continual")
    spanish = sample_text_path("rv1909_es_sample").read_text().splitlines()[:6]
    english = sample_text_path("web_en_sample").read_text().splitlines()[:4]
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
            "--block-size", "32", "--batch-size", "2", "--eval-batches", "2", "--new-level-size", "16",
            "--pretrained-period", str(PERIOD), "--warmup-steps", "0", "--learning-rate", "1e-3",
            "--output-dir", str(out / "runs"), "--results", str(out / "continual_forgetting.json"), *extra]


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
            rows = source[name.replace(".levels.0.", ".")][: p.shape[0]]
            out[name] = not torch.equal(p, rows)
        elif ".mlp.norms." in name:
            out[name] = not torch.equal(p, torch.ones_like(p))
        else:
            raise AssertionError(f"unexpected parameter {name}")
    return out


def run_study(setup, out: Path, *extra):
    """Run the script's main; returns (results, {(strategy, seed): which parameters changed},
    {(strategy, seed): trained model's state dict})."""
    llama = load_plain_llama(setup / "llama")
    diffs, states = {}, {}

    def inspect(record, model, held_out):
        key = (record["strategy"], record["seed"])
        diffs[key], states[key] = changed(llama, model), model.state_dict()
        # the reported new-domain perplexity after training is that of the trained model
        ppl = perplexity(model, held_out["new domain"], 2, 2)
        assert record["after"]["new domain"] == pytest.approx(ppl, rel=1e-6)

    results = run_forgetting.main(common_args(setup, out, *extra), on_trained=inspect)
    return llama, results, diffs, states


@pytest.fixture(scope="module")
def study(setup, tmp_path_factory):
    """All three strategies, two seeds, PERIOD - 1 steps."""
    out = tmp_path_factory.mktemp("study")
    return out, *run_study(setup, out, "--max-steps", str(PERIOD - 1), "--seeds", "0", "1")


def test_all_strategies_write_finite_results_on_the_same_tokens(setup, study):
    out, llama, results, _, _ = study
    saved = json.loads((out / "continual_forgetting.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(results["summary"]))
    assert (out / "continual_forgetting.png").stat().st_size > 0
    assert saved["command"].startswith("python evaluation/continual/run_forgetting.py --model ")
    runs = saved["runs"]
    assert [(r["strategy"], r["seed"]) for r in runs] == [(s, seed) for seed in (0, 1) for s in run_forgetting.STRATEGIES]
    steps = PERIOD - 1
    for r in runs:
        for when in ("before", "after"):
            assert set(r[when]) == {"new domain", "old domain"}
            assert all(math.isfinite(v) and v > 1 for v in r[when].values())
        assert r["forgetting_ratio"] == pytest.approx(r["after"]["old domain"] / r["before"]["old domain"])
        assert r["new_domain_gain"] == pytest.approx(r["before"]["new domain"] / r["after"]["new domain"])
        assert r["steps"] == steps and r["tokens"] == steps * 2 * 32
        assert all(math.isfinite(r[k]) for k in ("first_loss", "final_loss", "train_wall_s"))
        run_dir = out / "runs" / r["strategy"] / f"seed_{r['seed']}"
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
    assert set(saved["summary"]) == set(run_forgetting.STRATEGIES)


def test_full_finetune_changes_every_parameter(study):
    _, llama, _, diffs, _ = study
    for seed in (0, 1):
        diff = diffs["full_finetune", seed]
        assert set(diff) == {n for n, _ in llama.named_parameters()}
        assert all(diff.values()), [n for n, c in diff.items() if not c]


def test_frozen_strategy_changes_only_the_new_level(study):
    _, llama, _, diffs, states = study
    for seed in (0, 1):
        diff = diffs["cms_frozen", seed]
        new_level = {n for n in diff if ".mlp.levels." in n}
        assert new_level and all(diff[n] for n in new_level)  # the new fast level learned
        assert not any(c for n, c in diff.items() if n not in new_level), [n for n, c in diff.items() if c and n not in new_level]
        state = states["cms_frozen", seed]
        assert all(torch.equal(state[k], v) for k, v in llama.state_dict().items())  # pretrained weights bit-identical


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


def test_slow_level0_moves_at_its_period(setup, tmp_path):
    _, results, diffs, _ = run_study(setup, tmp_path, "--strategies", "cms_slow_level0", "--seeds", "0",
                                     "--max-steps", str(PERIOD))
    assert [r["steps"] for r in results["runs"]] == [PERIOD]
    check_slow_level0(diffs["cms_slow_level0", 0], moved=True)


def test_unknown_strategy_is_rejected_naming_the_allowed_ones(capsys):
    with pytest.raises(SystemExit):
        run_forgetting.parse_args(["--strategies", "full_finetune", "lora"])
    err = capsys.readouterr().err
    assert "'lora'" in err and all(name in err for name in run_forgetting.STRATEGIES)
    with pytest.raises(ValueError, match="allowed: full_finetune, cms_slow_level0, cms_frozen"):
        run_forgetting.build_model("lora", None, 16, 3)
