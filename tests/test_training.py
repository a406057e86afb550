"""The Accelerate training loop through scripts/train.py: multi-process equivalence, exact
resume in a new process, and bad input rejected before any training step."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM
from safetensors.torch import load_file

from hope_hf.data import sample_text_path
from hope_hf.training import train_bpe_tokenizer
from helpers import requires_cpp_compiler, small_training_data, tiny_model

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "scripts" / "train.py")
SMALL_RUN = ["--preset", "tiny", "--block-size", "32", "--batch-size", "2", "--eval-every", "0", "--eval-batches", "2",
             "--warmup-steps", "1", "--learning-rate", "3e-3", "--calibrate-tokens", "0"]


@pytest.fixture(scope="module")
def data_and_tokenizer(tmp_path_factory):
    return small_training_data(tmp_path_factory.mktemp("data"))


def run(args, env=None, launcher=(sys.executable,)):
    result = subprocess.run([*launcher, TRAIN, *args], capture_output=True, text=True, timeout=600, env=env)
    return result


def losses(output_dir):
    return [r["loss"] for r in map(json.loads, (Path(output_dir) / "train_log.jsonl").read_text().splitlines()) if "loss" in r]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("optimizer", ["adamw", "m3"])
def test_two_processes_match_one_process_with_double_accumulation(tmp_path, data_and_tokenizer, optimizer):
    common = [*SMALL_RUN, *data_and_tokenizer, "--max-steps", "3", "--save-every", "0", "--optimizer", optimizer]
    single = run([*common, "--output-dir", str(tmp_path / "one"), "--gradient-accumulation-steps", "2"])
    assert single.returncode == 0, single.stderr[-3000:]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()))
    double = run([*common, "--output-dir", str(tmp_path / "two"), "--gradient-accumulation-steps", "1"], env, torchrun)
    assert double.returncode == 0, double.stderr[-3000:]
    assert "num_processes=2" in double.stdout
    # same global batches: losses and weights agree up to float summation order
    torch.testing.assert_close(torch.tensor(losses(tmp_path / "two")), torch.tensor(losses(tmp_path / "one")), atol=1e-5, rtol=0)
    one, two = (load_file(tmp_path / d / "final" / "model.safetensors") for d in ("one", "two"))
    card = ModelCard.load(tmp_path / "two" / "final" / "README.md")  # written once, by the main process
    assert card.data.pipeline_tag == "text-generation" and "hope" in card.data.tags
    assert f"| training loss (step 3) | {losses(tmp_path / 'two')[-1]:.4g} |" in card.text
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("optimizer", ["adamw", "m3"])
def test_kill_and_resume_in_new_process_is_identical(tmp_path, data_and_tokenizer, optimizer):
    common = [*SMALL_RUN, *data_and_tokenizer, "--max-steps", "6", "--save-every", "3", "--gradient-accumulation-steps", "2",
              "--optimizer", optimizer]
    whole = run([*common, "--output-dir", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr[-3000:]
    stopped = run([*common, "--output-dir", str(tmp_path / "split"), "--stop-after-steps", "3"])
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert not (tmp_path / "split" / "final").exists()
    resumed = run([*common, "--output-dir", str(tmp_path / "split"), "--resume-from", str(tmp_path / "split" / "checkpoints" / "step_3")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(tmp_path / "split") == losses(tmp_path / "whole") and len(losses(tmp_path / "whole")) == 6
    a, b = (load_file(tmp_path / d / "final" / "model.safetensors") for d in ("whole", "split"))
    assert all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--data", "no/such/file.txt"], "no/such/file.txt"),
        (["--data", "EMPTY"], "no non-empty documents"),
        (["--block-size", "100000"], "over the model's maximum"),
        (["--preset", "gigantic"], "--preset must be one of"),
        (["--resume-from", "NOT_OURS"], "is not a hope_hf training checkpoint"),
        (["--calibrate-tokens", "100"], "--calibrate-tokens must be 0 (no calibration) or >= 257"),
    ],
)
def test_bad_input_is_rejected_before_training(tmp_path, data_and_tokenizer, extra, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    (tmp_path / "not_ours").mkdir()
    extra = [str(empty) if e == "EMPTY" else str(tmp_path / "not_ours") if e == "NOT_OURS" else e for e in extra]
    result = run([*SMALL_RUN, *data_and_tokenizer, "--max-steps", "2", "--output-dir", str(tmp_path / "out"), *extra])
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "out" / "train_log.jsonl").exists()


def test_the_saved_model_carries_a_calibrated_test_time_rule(tmp_path, data_and_tokenizer):
    from hope_hf.test_time.calibration import CANDIDATES, complete_entry

    args = [*SMALL_RUN[:-2], *data_and_tokenizer, "--max-steps", "2", "--save-every", "0", "--output-dir", str(tmp_path),
            "--calibrate-tokens", "300", "--calibrate-domains", "spanish", "code"]
    result = run(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test-time learning rule (chosen on 300 validation tokens of spanish, code)" in result.stdout
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    allowed = [complete_entry(model, c) for c in CANDIDATES["hope"]] + [{**complete_entry(model, CANDIDATES["hope"][0]), "lr": 0.0}]
    assert model.config.test_time_learning in allowed


def test_accelerate_config_files_parse_with_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for path in sorted((ROOT / "configs" / "accelerate").glob("*.yaml")):
        load_config_from_file(str(path))  # accelerate's own parser accepts every file
        kinds[path.stem] = yaml.safe_load(path.read_text())["distributed_type"]
    assert kinds == {"ddp": "MULTI_GPU", "deepspeed_zero2": "DEEPSPEED", "fsdp2": "FSDP", "single_gpu": "NO"}
    fsdp = yaml.safe_load((ROOT / "configs" / "accelerate" / "fsdp2.yaml").read_text())["fsdp_config"]
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_transformer_layer_cls_to_wrap"] == "HopeDecoderLayer"


def test_continual_pretrain_on_a_llama_directory(tmp_path):
    """The main job's script end to end on a tiny Llama (the SmolLM2 run is the README's first command)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from hope_hf.training.continual import perplexity
    from hope_hf.training.domains import domain_documents, domain_splits, text_documents

    lines = sample_text_path().read_text().splitlines()[:20]
    tokenizer = train_bpe_tokenizer(lines, 300)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, eos_token_id=tokenizer.eos_token_id))
    llama.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    (tmp_path / "new.txt").write_text("\n".join(lines[:12]) + "\n")
    (tmp_path / "old.txt").write_text("\n".join(lines[12:]) + "\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "continual_pretrain.py"), "--model", str(tmp_path / "llama"),
         "--data", str(tmp_path / "new.txt"), "--old-data", str(tmp_path / "old.txt"), "code", "--new-level-size", "16",
         "--block-size", "32", "--max-steps", "4", "--eval-every", "2", "--eval-blocks", "3", "--test-tokens", "256",
         "--slow-level-period", "2", "--max-new-tokens", "12", "--calibrate-tokens", "300", "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test-split perplexity" in result.stdout and all(d in result.stdout for d in ("new", "old", "code"))
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(results["before"]) == list(results["after"]) == ["new", "old", "code"]
    # before/after: the first --test-tokens (8 blocks) of the test split, stated in the output; curves: 3 validation blocks
    sources = {"new": text_documents(tmp_path / "new.txt"), "old": text_documents(tmp_path / "old.txt"),
               "code": domain_documents("code")}
    splits = {d: domain_splits(docs, tokenizer, 32, seed=0) for d, docs in sources.items()}
    assert results["measured_on"]["test_tokens"] == {d: 256 for d in splits}
    assert results["measured_on"]["test_blocks"] == {d: 8 for d in splits}
    assert all(len(s["test"]) >= 8 for s in splits.values())
    assert "test split" in results["measured_on"]["before_after_verdict"]
    assert all(f"{d} {t:,} tokens" in result.stdout for d, t in results["measured_on"]["test_tokens"].items())
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "final")
    for domain, curve in results["curves"].items():  # step 0 = the untrained model, then every 2 steps
        assert [step for step, _ in curve] == [0, 2, 4]
        validation, test = splits[domain]["validation"].select(range(3)), splits[domain]["test"].select(range(8))
        assert curve[-1][1] == pytest.approx(perplexity(final, validation, 2, 2), rel=1e-4)
        assert results["after"][domain] == pytest.approx(perplexity(final, test, len(test), 1), rel=1e-4)
    gain = results["before"]["new"] / results["after"]["new"]
    rises = {d: results["after"][d] / results["before"][d] - 1 for d in ("old", "code")}
    assert f"verdict: new {gain:.2f}x better" in result.stdout or f"verdict: new {1 / gain:.2f}x worse" in result.stdout
    assert all(f"{d} {100 * r:+.1f}%" in results["verdict"] for d, r in rises.items())
    assert results["sample"]["generation"]["no_repeat_ngram_size"] == 3
    assert (tmp_path / "out" / "loss_curve.png").stat().st_size > 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "final")
    assert model.config.model_type == "llama_cms"
    assert [(lv["name"], lv["update_period"]) for lv in model.config.cms_levels][1:] == [("fast", 1), ("slow", 2)]
    # the saved model carries the test-time rule chosen on 300 validation tokens of each domain
    calibration = results["test_time_learning"]
    assert model.config.test_time_learning == calibration["chosen"]
    assert calibration["chosen"] in [row["entry"] for row in calibration["candidates"]] or calibration["chosen"]["lr"] == 0
    assert calibration["validation_tokens"] == {str(tmp_path / "new.txt"): 300, str(tmp_path / "old.txt"): 300, "code": 300}
    assert [(row["entry"]["rule"], row["entry"]["lr"]) for row in calibration["candidates"]] == [
        ("adam", 1e-5), ("adam", 3e-5), ("rms", 1e-5), ("rms", 3e-5), ("rms", 1e-4), ("rms", 3e-6), ("rms", 1e-5)]
    assert [row["entry"]["periods"] for row in calibration["candidates"]] == [[None, 1, 2]] * 5 + [[1, 1, 1]] * 2
    card = ModelCard.load(tmp_path / "out" / "final" / "README.md")
    measured = {r.dataset_name: r.metric_value for r in card.data.eval_results}
    tokens = results["measured_on"]["test_tokens"]
    expected = {f"test-split perplexity ({tokens[domain]:,} tokens), {domain}, {when}": round(results[when][domain], 4)
                for when in ("before", "after") for domain in ("new", "old", "code")}
    assert expected.items() <= measured.items()
    assert "llama_cms" in card.data.tags and "new.txt" in card.text


def test_generation_config_of_the_main_job_stops_a_loop():
    """Greedy decoding of a model that always prefers the same tokens loops; the main job's
    generation config breaks the loop (no 3-gram twice)."""
    import importlib.util

    from transformers import LlamaConfig, LlamaForCausalLM

    spec = importlib.util.spec_from_file_location("continual_pretrain", ROOT / "scripts" / "continual_pretrain.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, eos_token_id=None)).eval()

    class Tok:
        eos_token_id = None

    ids = torch.tensor([[1, 2, 3]])

    def repeated_trigrams(tokens):
        grams = [tuple(tokens[i:i + 3]) for i in range(len(tokens) - 2)]
        return len(grams) - len(set(grams))

    plain = model.generate(ids, max_new_tokens=40, do_sample=False, pad_token_id=0)[0].tolist()
    assert repeated_trigrams(plain) > 0  # a random tiny model loops under plain greedy decoding
    guarded = model.generate(ids, generation_config=script.generation_config(Tok(), 40))[0].tolist()
    assert len(guarded) == 43 and repeated_trigrams(guarded) == 0


def test_txt_jsonl_and_parquet_give_the_same_blocks(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hope_hf.training import build_datasets

    lines = sample_text_path().read_text().splitlines()[:8]
    tokenizer = train_bpe_tokenizer(lines, 300)
    (tmp_path / "d.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    pq.write_table(pa.table({"text": lines}), tmp_path / "d.parquet")
    blocks = {}
    for suffix in ("txt", "jsonl", "parquet"):
        train_blocks, held_out = build_datasets([str(tmp_path / f"d.{suffix}")], tokenizer, 16, eval_fraction=0.25)
        blocks[suffix] = (train_blocks[:]["input_ids"], held_out[:]["input_ids"])
        assert blocks[suffix][0].shape[1] == 16
        assert (blocks[suffix][0] == tokenizer.eos_token_id).sum() >= 1  # documents are separated by EOS
    for suffix in ("jsonl", "parquet"):
        assert all(torch.equal(a, b) for a, b in zip(blocks[suffix], blocks["txt"]))


@requires_cpp_compiler
def test_compile_chunks_trains_like_eager(tmp_path, data_and_tokenizer):
    """--compile-chunks (torch.compile on the titans chunk functions) gives eager's losses."""
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["--compile-chunks"])):
        result = run([*SMALL_RUN, *data_and_tokenizer, "--max-steps", "3", "--output-dir", str(tmp_path / name), *extra])
        assert result.returncode == 0, result.stderr[-2000:]
        assert "torch.compile failed" not in result.stderr  # the compiled path ran, not the eager fallback
        runs[name] = losses(tmp_path / name)
    assert len(runs["eager"]) == 3
    assert runs["compiled"] == pytest.approx(runs["eager"], rel=1e-4)


def test_document_inputs_read_every_document_of_a_block_alone():
    """Blocks of documents packed with an EOS after each: position_ids restart after every EOS, the
    first token of each document is no label, and the loss is the documents' own (Hope and Llama)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hope_hf.training.trainer import document_inputs

    eos = 2
    docs = [[5, 6, 7, eos], [8, 9, 10, 11, 12, eos], [13, 14, 15]]
    block = torch.tensor([sum(docs, [])])
    inputs = document_inputs(block, eos)
    assert inputs["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 0, 1, 2]]
    assert inputs["labels"].tolist() == [[5, 6, 7, eos, -100, 9, 10, 11, 12, eos, -100, 14, 15]]
    assert document_inputs(block) == {"input_ids": block, "labels": block}
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    for model in (tiny_model(mixer=["titans", "attention"]).double(), llama.double()):
        alone = [(model(torch.tensor([d]), labels=torch.tensor([d])).loss, len(d) - 1) for d in docs]
        expected = sum(loss * n for loss, n in alone) / sum(n for _, n in alone)
        torch.testing.assert_close(model(**inputs).loss, expected, atol=1e-6, rtol=0)  # transformers' loss is fp32
