"""Long-context evaluations (passkey, MK-NIAH): generators, the evaluator with oracle and
always-wrong answer functions, the Hugging Face adapter on a real tiny Hope with a real (locally
trained BPE) tokenizer, and argument checks. MQAR is tested in test_mqar.py."""

import dataclasses
import json

import pytest
import torch

from evaluation.lib.results import HEADER
from evaluation.long_context import run_niah
from helpers import tiny_model
from hope_hf.data import sample_text_path
from hope_hf.evaluation.long_context import (
    NIAH_INTRO,
    NIAH_QUESTION,
    PASSKEY_INTRO,
    PASSKEY_QUESTION,
    TASKS,
    evaluate,
    generate_examples,
    hf_answer_fn,
    is_correct,
    make_mk_niah_example,
    make_passkey_example,
)
from hope_hf.training.tokenizer import train_bpe_tokenizer

LENGTHS = [384, 768]
DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE trained on the embedded text (0.3 s), with the digits and the task words."""
    lines = sample_text_path("web_en_sample").read_text(encoding="utf-8").splitlines()
    return train_bpe_tokenizer(lines + ["0 1 2 3 4 5 6 7 8 9 pass key special magic number"], vocab_size=1000)


@pytest.fixture(scope="module")
def examples(tokenizer):
    return {task: generate_examples(task, tokenizer, LENGTHS, DEPTHS, examples_per_cell=2, seed=7) for task in TASKS}


def as_dicts(examples):
    return [dataclasses.asdict(e) for e in examples]


@pytest.mark.parametrize("task", TASKS)
def test_generators_are_deterministic_for_a_seed_and_differ_across_seeds(task, tokenizer, examples):
    again = generate_examples(task, tokenizer, LENGTHS, DEPTHS, examples_per_cell=2, seed=7)
    other = generate_examples(task, tokenizer, LENGTHS, DEPTHS, examples_per_cell=2, seed=8)
    assert as_dicts(again) == as_dicts(examples[task])
    assert [e.answer for e in other] != [e.answer for e in again]
    assert all(a.prompt != b.prompt for a, b in zip(other, again))
    # the two examples of a cell differ too
    assert len({e.answer for e in examples[task]}) > len(examples[task]) // 2


@pytest.mark.parametrize("task", TASKS)
def test_needle_is_where_the_example_says(task, tokenizer, examples):
    intro, question = (PASSKEY_INTRO, PASSKEY_QUESTION) if task == "passkey" else (NIAH_INTRO, NIAH_QUESTION)
    for example in examples[task]:
        needle = example.needle
        ids = tokenizer(example.prompt)["input_ids"]
        assert example.num_tokens == len(ids)
        assert example.context_length - 8 <= example.num_tokens <= example.context_length
        assert example.prompt[needle.char_start:].startswith(needle.text)
        assert tokenizer.decode(ids[needle.token_start:]).lstrip().startswith(needle.text)
        assert not tokenizer.decode(ids[needle.token_start + 1:]).lstrip().startswith(needle.text)
        assert example.answer == needle.value and f" {needle.value}." in needle.text
        asked = question.format(key=needle.key)
        assert example.prompt.startswith(intro) and example.prompt.endswith(asked)
        if example.depth == 0.0:
            assert needle.char_start == len(intro)
        if example.depth == 1.0:
            assert example.prompt[needle.char_start + len(needle.text):] == asked
        for other in example.distractors:
            assert example.prompt[other.char_start:].startswith(other.text)
            assert other.value != needle.value and other.key != needle.key
        assert example.prompt.count(needle.value) == (2 if task == "passkey" else 1)


def test_needle_depth_follows_the_requested_depth(tokenizer):
    """Short filler sentences (passkey): the realised depth is within a sentence of the request."""
    for depth in DEPTHS:
        example = make_passkey_example(tokenizer, 1024, depth, seed=3)
        assert abs(example.needle.depth - depth) < 0.03
    positions = [make_mk_niah_example(tokenizer, 1024, d, seed=3).needle.char_start for d in DEPTHS]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)


@pytest.mark.parametrize("task", TASKS)
def test_evaluator_scores_an_oracle_at_one_and_a_wrong_answer_at_zero(task, examples):
    right = evaluate(examples[task], lambda e: f" {e.answer}. Remember it.", progress=False)
    wrong = evaluate(examples[task], lambda e: f" {e.answer}0 or {int(e.answer) - 1}", progress=False)
    assert right["accuracy"] == 1.0 and wrong["accuracy"] == 0.0
    for report, expected in ((right, 1.0), (wrong, 0.0)):
        grid = report["grid"][task]
        assert sorted(grid) == sorted(str(n) for n in LENGTHS)
        assert all(grid[str(n)][f"{d:g}"] == expected for n in LENGTHS for d in DEPTHS)
        assert all(cell["num_examples"] == 2 for cell in report["cells"])
    half = evaluate(examples[task], lambda e: e.answer if e.depth < 0.5 else "no", progress=False)
    assert half["grid"][task]["384"] == {"0": 1.0, "0.25": 1.0, "0.5": 0.0, "0.75": 0.0, "1": 0.0}
    assert half["accuracy"] == pytest.approx(0.4)


def test_exact_match_needs_the_whole_number():
    assert is_correct(" 12345.", "12345") and is_correct("key is 12345", "12345")
    assert not is_correct(" 123456", "12345") and not is_correct("912345", "12345") and not is_correct("1234", "12345")


def test_hf_adapter_runs_end_to_end_on_a_tiny_hope(tokenizer):
    model = tiny_model(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, titans_chunk_size=16)
    both = [e for task in TASKS for e in generate_examples(task, tokenizer, [300, 400], [0.0, 1.0], seed=1)]
    seen_prompts = []

    def recording(answer_fn):
        def answer(example):
            seen_prompts.append(example.prompt)
            return answer_fn(example)
        return answer

    report = evaluate(both, recording(hf_answer_fn(model, tokenizer, max_new_tokens=3)), progress=False)
    assert seen_prompts == [e.prompt for e in both]
    assert set(report["grid"]) == set(TASKS) and len(report["cells"]) == 8
    assert all(0.0 <= cell["accuracy"] <= 1.0 for cell in report["cells"])
    assert 0.0 <= report["accuracy"] <= 1.0
    for record in report["records"]:  # only the new tokens come back
        assert isinstance(record["output"], str) and len(record["output"]) < 60


def test_hf_adapter_scores_a_model_that_repeats_the_key():
    """A stand-in 'model' whose generate appends the needle's number: the adapter decodes only the
    new tokens and the evaluator counts it right; appending another number counts it wrong."""
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    filler = "The grass is green. sky blue. sun yellow. Here we go. There and back again. pass key Remember it."
    words = PASSKEY_INTRO.split() + PASSKEY_QUESTION.split() + filler.split()
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", *sorted(set(words)), *[str(n) for n in range(10000, 100000)]])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    word_tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>")
    examples = generate_examples("passkey", word_tokenizer, [200], [0.0, 0.5, 1.0], seed=2)

    class Echo:
        device = torch.device("cpu")

        def __init__(self, shift):
            self.shift = shift

        def generate(self, input_ids, max_new_tokens, **kwargs):
            answer = word_tokenizer.convert_tokens_to_ids(str(int(examples_by_prompt[tuple(input_ids[0].tolist())]) + self.shift))
            return torch.cat([input_ids, torch.tensor([[answer]])], dim=1)

    examples_by_prompt = {tuple(word_tokenizer(e.prompt)["input_ids"]): e.answer for e in examples}
    assert evaluate(examples, hf_answer_fn(Echo(0), word_tokenizer), progress=False)["accuracy"] == 1.0
    assert evaluate(examples, hf_answer_fn(Echo(1), word_tokenizer), progress=False)["accuracy"] == 0.0


@pytest.mark.parametrize("call, message", [
    (lambda tok: generate_examples("ruler", tok, [512], [0.5]), "task must be one of"),
    (lambda tok: generate_examples("passkey", tok, [100], [0.5]), "context_length=100 is below the 'passkey' prompt length"),
    (lambda tok: make_mk_niah_example(tok, 200, 0.5), "context_length=200 is below the 'mk_niah' prompt length"),
    (lambda tok: generate_examples("passkey", tok, [512], [1.5]), r"depth must be a number in \[0, 1\]"),
    (lambda tok: make_passkey_example(tok, 512, -0.1), r"depth must be a number in \[0, 1\]"),
    (lambda tok: generate_examples("passkey", tok, [512], [0.5], examples_per_cell=0), "examples_per_cell must be an int >= 1"),
    (lambda tok: generate_examples("mk_niah", tok, [512], [0.5], haystack="essays"), "haystack must be one of"),
    (lambda tok: make_mk_niah_example(tok, 512, 0.5, num_needles=0), "num_needles must be an int >= 1"),
    (lambda tok: generate_examples("passkey", tok, [], [0.5]), "context_lengths and depths must be non-empty"),
    (lambda tok: hf_answer_fn(None, tok, max_new_tokens=0), "max_new_tokens must be an int >= 1"),
    (lambda tok: evaluate([], lambda e: ""), "examples must be non-empty"),
])
def test_bad_arguments_raise_clear_errors(tokenizer, call, message):
    with pytest.raises(ValueError, match=message):
        call(tokenizer)


def test_scripts_write_json_and_png(tmp_path, tokenizer):
    model = tiny_model(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, titans_chunk_size=16)
    model.save_pretrained(tmp_path / "hope")
    tokenizer.save_pretrained(tmp_path / "hope")
    niah = run_niah.main(["--model", str(tmp_path / "hope"), "--context-lengths", "300", "400",
                                         "--depths", "0", "1", "--examples-per-cell", "1", "--max-new-tokens", "2",
                                         "--output", str(tmp_path / "niah.json")])
    assert set(niah["grid"]) == {"passkey", "mk_niah"} and niah["num_examples"] == 8
    assert json.loads((tmp_path / "niah.json").read_text())["command"].startswith("python -m evaluation.long_context.run_niah ")
    assert (tmp_path / "niah.png").stat().st_size > 1000


def test_a_default_niah_run_writes_under_outputs_with_the_results_header(tmp_path, tokenizer, monkeypatch):
    model = tiny_model(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, titans_chunk_size=16)
    model.save_pretrained(tmp_path / "hope")
    tokenizer.save_pretrained(tmp_path / "hope")
    monkeypatch.chdir(tmp_path)
    run_niah.main(["--model", str(tmp_path / "hope"), "--tasks", "passkey", "--context-lengths", "300", "--depths", "0",
                   "--examples-per-cell", "1", "--max-new-tokens", "2"])
    saved = json.loads((tmp_path / "outputs" / "niah_smollm2.json").read_text())
    assert list(saved)[: len(HEADER)] == list(HEADER) and saved["num_examples"] == 1


def test_the_shipped_gguf_loads_as_an_fp32_model():
    """The default --model: transformers refuses .float() on a GGUF-loaded model; the load itself is fp32."""
    from hope_hf.data import smollm2_gguf_path

    model, tokenizer = run_niah.load_model_and_tokenizer(smollm2_gguf_path())
    assert not model.training and {p.dtype for p in model.parameters()} == {torch.float32}
    ids = torch.tensor([tokenizer("The passkey is 12345.").input_ids])
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
