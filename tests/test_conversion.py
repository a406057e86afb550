"""hope_hf.conversion and scripts/convert_llama_to_hope.py: the weight mapping (exact where attention
is kept, the titans mixers initialised from the attention), the two distillation stages on a tiny
Llama, resume, save/load and generation of the converted model."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from hope_hf import HopeForCausalLM
from hope_hf.conversion import LayerMatching, LogitDistillation, attention_layers, convert_llama_to_hope

ROOT = Path(__file__).resolve().parents[1]


def tiny_llama(vocab_size=97, tie=True, layers=4):
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def ids(batch=2, length=37, vocab=97):
    return torch.randint(3, vocab, (batch, length))


@pytest.mark.parametrize("tie", [True, False])
def test_keeping_every_attention_layer_computes_what_the_llama_computes(tie):
    llama = tiny_llama(tie=tie)
    hope = convert_llama_to_hope(llama, "0,1,2,3")
    assert isinstance(hope, HopeForCausalLM) and hope.config.mixers == ["attention"] * 4
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(hope(x).logits, llama(x).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("depth", [1, 2])
def test_titans_mixers_take_the_attention_weights_and_start_closed(depth):
    llama = tiny_llama()
    hope = convert_llama_to_hope(llama, "1/2", titans_chunk_size=8, titans_memory_depth=depth)
    assert hope.config.mixers == ["attention", "titans", "attention", "titans"]
    mixer, attention = hope.model.layers[1].mixer, llama.model.layers[1].self_attn
    d, groups = mixer.head_dim, 2  # 4 query heads share 2 key/value heads
    assert torch.equal(mixer.q_proj.weight, attention.q_proj.weight)
    assert torch.equal(mixer.o_proj.weight, attention.o_proj.weight)
    for head in range(mixer.num_heads):
        rows, kv_rows = slice(head * d, (head + 1) * d), slice(head // groups * d, (head // groups + 1) * d)
        assert torch.equal(mixer.u_proj.weight[rows], attention.k_proj.weight[kv_rows])
        assert torch.equal(mixer.v_proj.weight[rows], attention.v_proj.weight[kv_rows])
    first_layer = slice(2 * d, 3 * d)  # a depth-2 memory's W1: drawn, not zero (W2 = 0 makes it the identity)
    assert (mixer.initial_state[..., first_layer].abs().max() > 0) == (depth == 2)
    assert mixer.initial_state[..., : 2 * d].abs().max() == 0 and mixer.initial_state[..., 3 * d :].abs().max() == 0
    assert mixer.g_proj.weight.abs().max() == 0
    # a closed gate: the converted model computes the Llama with those layers' attention removed
    removed = tiny_llama()
    removed.load_state_dict(llama.state_dict())
    for i in (1, 3):
        torch.nn.init.zeros_(removed.model.layers[i].self_attn.o_proj.weight)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(hope(x).logits, removed(x).logits, atol=1e-5, rtol=0)


def test_attention_layer_specs():
    assert attention_layers("1/4", 10) == [0, 4, 8]
    assert attention_layers("1/1", 3) == [0, 1, 2]
    assert attention_layers("", 10) == [] and attention_layers(None, 10) == []
    assert attention_layers("5,0,5", 10) == [0, 5]
    for bad in ("2/4", "1/0", "a,b", "10", "-1"):
        with pytest.raises(ValueError, match="keep_attention"):
            attention_layers(bad, 10)


def train_a_little(loss_fn, student, parameters, x, steps=15, lr=3e-3) -> list[float]:
    optimizer = torch.optim.AdamW(parameters, lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn(student, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_stage_losses_fall_when_trained_directly():
    torch.manual_seed(0)
    llama, x = tiny_llama(), ids(4, 48)
    hope = convert_llama_to_hope(llama, "0", titans_chunk_size=8)
    mixers = [p for n, p in hope.named_parameters() if ".mixer." in n and not n.startswith("model.layers.0.")]
    matching = LayerMatching(llama, [1, 2, 3])
    losses = train_a_little(matching, hope, mixers, x)
    assert losses[0] == pytest.approx(1.0) and losses[-1] < 0.8  # a closed gate: relative error 1 at the start
    matching.close()
    llama(x)
    assert matching.captured == {}  # no hook left on the teacher

    with torch.no_grad():  # a teacher with a sharper next-token distribution than a random Llama's
        llama.model.embed_tokens.weight.mul_(30)
    hope = convert_llama_to_hope(llama, "", titans_chunk_size=8)
    losses = train_a_little(LogitDistillation(llama, temperature=2.0), hope, list(hope.parameters()), x, lr=1e-3)
    assert losses[-1] < 0.8 * losses[0], losses
    with pytest.raises(ValueError, match="temperature"):
        LogitDistillation(llama, temperature=0)


def load_script():
    spec = importlib.util.spec_from_file_location("convert_llama_to_hope", ROOT / "scripts" / "convert_llama_to_hope.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from hope_hf.training import train_bpe_tokenizer
    from hope_hf.training.domains import domain_documents

    folder = tmp_path_factory.mktemp("llama")
    tokenizer = train_bpe_tokenizer(domain_documents("english")[:200], 300)
    tiny_llama(vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_script_runs_both_stages_resumes_and_saves_a_model_that_generates(llama_dir, tmp_path):
    script = load_script()
    out = tmp_path / "hope"
    common = [str(llama_dir), "--output-dir", str(out), "--keep-attention", "1/2", "--data", "english", "--block-size",
              "32", "--batch-size", "4", "--match-steps", "12", "--distill-steps", "8", "--match-lr", "3e-3",
              "--distill-lr", "1e-3", "--chunk-size", "8", "--eval-every", "4", "--save-every", "4", "--warmup-steps",
              "2", "--test-blocks", "8"]
    assert script.main([*common, "--stop-after-steps", "6"]) is None  # interrupted in stage (a)
    results = script.main([*common, "--resume"])
    match_log = [json.loads(line) for line in (out / "match" / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in match_log if "loss" in r]
    assert [r["step"] for r in match_log if "loss" in r] == list(range(1, 13))  # resumed at step 6, nothing repeated
    assert losses[0] == pytest.approx(1.0) and all(0 < x < 2 for x in losses)  # relative error: 1 at the start
    # stage (a) trains only the titans mixers; stage (b) every parameter
    start = convert_llama_to_hope(str(llama_dir), "1/2", titans_chunk_size=8).state_dict()
    matched = HopeForCausalLM.from_pretrained(out / "match" / "final").state_dict()
    distilled = HopeForCausalLM.from_pretrained(out / "final").state_dict()
    for name, tensor in start.items():
        in_titans_mixer = ".mixer." in name and name.split(".")[2] in ("1", "3")
        assert torch.equal(matched[name], tensor) != in_titans_mixer, name
        assert not torch.equal(distilled[name], matched[name]) or name.endswith(("b_eta", "b_alpha")), name
    distill_log = [json.loads(line) for line in (out / "distill" / "train_log.jsonl").read_text().splitlines()]
    assert len([r for r in distill_log if "loss" in r]) == 8
    assert set(results["test_perplexity"]) == {"teacher", "student"}
    assert all(v > 1 for side in results["test_perplexity"].values() for v in side.values())
    assert results["titans_layers"] == [1, 3] and results["training_tokens"] == {"match": 12 * 128, "distill": 8 * 128}

    model = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    assert isinstance(model, HopeForCausalLM) and model.config.mixers == ["attention", "titans"] * 2
    assert "teacher" in (out / "final" / "README.md").read_text().lower()
    prompt = ids(1, 9, model.config.vocab_size)
    cached = model.generate(prompt, max_new_tokens=12, do_sample=False)
    uncached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_script_distills_mixers_with_lora_elsewhere_and_saves_merged(llama_dir, tmp_path):
    """--distill-params mixers+lora: titans mixers train, MLPs and kept attention layers through
    LoRA (merged before saving), embeddings and norms stay; the saved model is a plain Hope."""
    script = load_script()
    out = tmp_path / "hope"
    script.main([str(llama_dir), "--output-dir", str(out), "--keep-attention", "0", "--data", "english", "--block-size",
                 "32", "--batch-size", "4", "--match-steps", "2", "--distill-steps", "4", "--distill-lr", "1e-2",
                 "--distill-params", "mixers+lora", "--lora-rank", "4", "--chunk-size", "8", "--eval-every", "0",
                 "--save-every", "0", "--warmup-steps", "1", "--test-blocks", "4"])
    matched = HopeForCausalLM.from_pretrained(out / "match" / "final").state_dict()
    final = HopeForCausalLM.from_pretrained(out / "final")
    assert not any("lora" in name for name in final.state_dict())
    changed = {name for name, tensor in final.state_dict().items() if not torch.equal(tensor, matched[name])}
    assert "model.layers.0.mixer.q_proj.weight" in changed and "model.layers.2.cms.levels.0.up_proj.weight" in changed
    assert "model.layers.1.mixer.initial_state" in changed  # a titans mixer, trained in full
    frozen = [name for name in changed if name.startswith("model.embed_tokens") or name.endswith(("mixer_norm.weight",
                                                                                                  "cms_norm.weight"))]
    assert not frozen and "model.norm.weight" not in changed


def test_students_runner_converts_each_student_measures_passkey_and_resumes(llama_dir, tmp_path):
    """evaluation.conversion.run_students on a tiny Llama: the teacher's passkey and lm-eval runs,
    then each student through the real conversion command (a subprocess), its passkey and lm-eval
    runs; a second call with --resume runs nothing again."""
    from evaluation.conversion import run_students

    argv = ["--source", str(llama_dir), "--students", "1/2", "", "--match-steps", "4", "--distill-steps", "2",
            "--passkey-lengths", "200", "--passkey-examples", "1", "--lm-eval-limit", "2",
            "--work-dir", str(tmp_path / "work"),
            "--output", str(tmp_path / "students.json"), "--conversion-args",
            "--data english --block-size 32 --batch-size 4 --chunk-size 8 --eval-every 2 --save-every 2 "
            "--warmup-steps 1 --test-blocks 4"]
    saved = run_students.main(argv)
    assert [(r["model"], r.get("keep_attention")) for r in saved["runs"]] == [("teacher", None), ("student", "1/2"),
                                                                              ("student", "")]
    teacher, half, none = saved["runs"]
    assert all(0 <= r["passkey_accuracy"] <= 1 and set(r["passkey_accuracy_by_length"]) == {"200"} for r in saved["runs"])
    for run in saved["runs"]:
        scores = {(row["task"], row["metric"]): row for row in run["lm_eval"]}
        assert {task for task, _ in scores} == {"hope_local_ppl_en", "hope_local_ppl_es", "hope_local_lambada_en"}
        perplexity = scores["hope_local_ppl_en", "word_perplexity"]
        assert perplexity["value"] > 1 and perplexity["samples"] == 2
        assert 0 <= scores["hope_local_lambada_en", "acc"]["value"] <= 1
    assert half["lm_eval"] != none["lm_eval"]  # each student scored on its own weights
    assert half["attention_layers"] == [0, 2] and half["titans_layers"] == [1, 3] and none["titans_layers"] == [0, 1, 2, 3]
    for run in (half, none):
        assert set(run["test_perplexity"]) == {"teacher", "student"} and set(run["test_perplexity"]["student"]) == {"english"}
        assert run["training_tokens"] == {"match": 4 * 4 * 32, "distill": 2 * 4 * 32} and run["wall_s"] > 0
    assert (tmp_path / "work" / "all_titans" / "final" / "config.json").exists()
    again = run_students.main([*argv, "--resume"])
    assert again["runs"] == saved["runs"]  # nothing ran again
