"""Long-context retrieval evaluations for any causal LM: passkey retrieval and multi-key
needle-in-a-haystack (RULER-style S-NIAH / MK-NIAH).

Generators build prompts of a requested length in TOKENS of a given tokenizer, with the needle
at a requested depth in [0, 1] (0 = right after the instructions, 1 = right before the
question). Every example records where its needle is (character and token position) and the
answer; the same seed gives the same example.

    tokenizer = AutoTokenizer.from_pretrained(...)
    examples = generate_examples("passkey", tokenizer, context_lengths=[256, 512], depths=[0, 0.5, 1])
    report = evaluate(examples, hf_answer_fn(model, tokenizer))
    report["accuracy"], report["grid"]["passkey"]["512"]["0.5"]

The evaluator only needs an ``answer_fn(example) -> str``: ``hf_answer_fn`` adapts a Hugging
Face model (greedy ``generate``); an answer counts as correct when the expected number occurs
in the output as a whole number (not inside a longer one).
"""

from __future__ import annotations

import random
import re
import zlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

from tqdm.auto import tqdm

TASKS = ("passkey", "mk_niah")
HAYSTACKS = ("text", "noise")

# Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention"): the original template.
PASSKEY_INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. "
                 "Find it and memorize it. I will quiz you about the important information there.\n\n")
PASSKEY_NEEDLE = "The pass key is {value}. Remember it. {value} is the pass key."
PASSKEY_QUESTION = "\n\nWhat is the pass key? The pass key is"

# Multi-key NIAH (Hsieh et al. 2024, RULER): several key/value needles, one key asked.
NIAH_INTRO = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. "
              "I will quiz you about the numbers afterwards.\n\n")
NIAH_NEEDLE = "The special magic number for {key} is {value}."
NIAH_QUESTION = ("\n\nWhat is the special magic number for {key} mentioned in the provided text? "
                 "The special magic number for {key} mentioned in the provided text is")

# The passkey paper's filler, repeated ("noise" haystack).
NOISE_SENTENCES = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")

KEY_ADJECTIVES = ("quiet", "amber", "hollow", "brisk", "silver", "crooked", "gentle", "rusty", "bright", "frozen",
                  "narrow", "velvet", "wild", "humble", "golden", "misty")
KEY_NOUNS = ("harbor", "lantern", "meadow", "falcon", "orchard", "compass", "glacier", "thimble", "canyon", "violin",
             "pepper", "anchor", "willow", "beacon", "marble", "tundra")


@dataclass(frozen=True)
class Needle:
    """One inserted needle: its sentence, the value it hides (and its key for MK-NIAH), where it
    starts in the prompt (character offset, and index of the token holding that character) and
    its realised depth (share of the filler's characters before it; needles go at sentence
    boundaries, so this is the boundary closest to the depth asked for)."""

    text: str
    value: str
    key: str | None
    char_start: int = -1
    token_start: int = -1
    depth: float = -1.0


@dataclass(frozen=True)
class NeedleExample:
    """A prompt of about ``context_length`` tokens (``num_tokens`` exactly) whose answer is
    ``answer``; ``needle`` is the one asked about, ``distractors`` the other needles (MK-NIAH)."""

    task: str
    prompt: str
    answer: str
    context_length: int
    depth: float
    seed: int
    num_tokens: int
    needle: Needle
    distractors: tuple[Needle, ...] = field(default_factory=tuple)


# ---------------------------------------------------------------------------------------------
# argument checks


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def check_depth(depth: float) -> None:
    if isinstance(depth, bool) or not isinstance(depth, (int, float)) or not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be a number in [0, 1] (0 = start of the context, 1 = end), got {depth!r}")


def check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def check_haystack(haystack: str) -> None:
    if haystack not in HAYSTACKS:
        raise ValueError(f"haystack must be one of {HAYSTACKS} ('text': embedded English text, "
                         f"'noise': the passkey paper's repeated sentences), got {haystack!r}")


# ---------------------------------------------------------------------------------------------
# haystack


_TEXT_SENTENCES: list[str] | None = None


def text_sentences() -> list[str]:
    """The sentences of the embedded public-domain English text (World English Bible)."""
    global _TEXT_SENTENCES
    if _TEXT_SENTENCES is None:
        from hope_hf.data import sample_text_path

        text = sample_text_path("web_en_sample").read_text(encoding="utf-8")
        _TEXT_SENTENCES = [s for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s]
    return _TEXT_SENTENCES


def filler_sentences(haystack: str, rng: random.Random, num_words: int) -> list[str]:
    """Whole sentences of filler, ``num_words`` words in all (the last one cut and closed with
    a period). 'text' starts at a random sentence of the embedded text and wraps around."""
    pool = text_sentences() if haystack == "text" else list(NOISE_SENTENCES)
    index = rng.randrange(len(pool)) if haystack == "text" else 0
    sentences, words_left = [], num_words
    while words_left > 0:
        words = pool[index % len(pool)].split()
        if len(words) > words_left:
            words = words[:words_left]
            words[-1] = words[-1].rstrip(",;:“”‘’\"'") + "."
        sentences.append(" ".join(words))
        words_left -= len(words)
        index += 1
    return sentences


def boundary_depths(sentences: Sequence[str]) -> list[float]:
    """For each sentence boundary 0 .. len(sentences): the share of the filler's characters before it."""
    ends = [0]
    for sentence in sentences:
        ends.append(ends[-1] + len(sentence) + 1)
    return [end / ends[-1] if ends[-1] else 0.0 for end in ends]


def join_with_needles(sentences: Sequence[str], needle_depths: Sequence[float], needle_texts: Sequence[str]
                      ) -> tuple[str, list[int], list[float]]:
    """Insert every needle at the sentence boundary closest to its depth (needles sharing a
    boundary go in order of depth). Returns the body, each needle's character offset in it and
    its realised depth (share of filler characters before it), in the order given."""
    depths_at = boundary_depths(sentences)
    at_boundary = defaultdict(list)
    for order, depth in enumerate(needle_depths):
        boundary = min(range(len(depths_at)), key=lambda b: abs(depths_at[b] - depth))
        at_boundary[boundary].append(order)
    parts, offsets, realised, position = [], [0] * len(needle_texts), [0.0] * len(needle_texts), 0
    for boundary in range(len(sentences) + 1):
        inserted = sorted(at_boundary.get(boundary, []), key=lambda order: needle_depths[order])
        pieces = [(order, needle_texts[order]) for order in inserted]
        if boundary < len(sentences):
            pieces.append((None, sentences[boundary]))
        for order, text in pieces:
            if parts:
                position += 1  # the joining space
            if order is not None:
                offsets[order], realised[order] = position, depths_at[boundary]
            parts.append(text)
            position += len(text)
    return " ".join(parts), offsets, realised


# ---------------------------------------------------------------------------------------------
# generators


def count_tokens(tokenizer, text: str) -> int:
    """Tokens the model sees for ``text`` (special tokens such as BOS included)."""
    return len(tokenizer(text)["input_ids"])


def token_index_of_char(tokenizer, text: str, char_index: int) -> int:
    """Index of the token that holds character ``char_index`` of ``text`` (its leading space may
    belong to that token)."""
    if getattr(tokenizer, "is_fast", False):
        encoding = tokenizer(text, return_offsets_mapping=True)
        for index, (start, end) in enumerate(encoding["offset_mapping"]):
            if end > char_index and end > start:
                return index
        return len(encoding["input_ids"])
    return count_tokens(tokenizer, text[:char_index].rstrip())


def build_example(task: str, tokenizer, context_length: int, depth: float, seed: int, haystack: str,
                  intro: str, question: str, needles: Sequence[tuple[float, Needle]]) -> NeedleExample:
    """Fill the haystack with as many words as fit in ``context_length`` tokens (binary search on
    the word count, tokenising the whole prompt), then record where the needles landed.
    ``needles[0]`` is the one asked about."""
    rng_state = random.Random(seed).getstate()

    def render(num_words: int) -> tuple[str, list[int]]:
        rng = random.Random()
        rng.setstate(rng_state)
        sentences = filler_sentences(haystack, rng, num_words)
        body, offsets, realised = join_with_needles(sentences, [d for d, _ in needles], [n.text for _, n in needles])
        return intro + body + question, [len(intro) + o for o in offsets], realised

    prompt_length = count_tokens(tokenizer, render(0)[0])
    if prompt_length > context_length:
        raise ValueError(f"context_length={context_length} is below the {task!r} prompt length: instructions, "
                         f"needle(s) and question alone take {prompt_length} tokens with this tokenizer; "
                         f"use context_length >= {prompt_length}")
    low, high = 0, context_length  # every word is at least one token
    while low < high:
        middle = (low + high + 1) // 2
        if count_tokens(tokenizer, render(middle)[0]) <= context_length:
            low = middle
        else:
            high = middle - 1
    prompt, offsets, realised = render(low)
    placed = [Needle(text=n.text, value=n.value, key=n.key, char_start=offset,
                     token_start=token_index_of_char(tokenizer, prompt, offset), depth=depth)
              for (_, n), offset, depth in zip(needles, offsets, realised)]
    return NeedleExample(task=task, prompt=prompt, answer=placed[0].value, context_length=context_length, depth=depth,
                         seed=seed, num_tokens=count_tokens(tokenizer, prompt), needle=placed[0],
                         distractors=tuple(placed[1:]))


def make_passkey_example(tokenizer, context_length: int, depth: float, seed: int = 0,
                         haystack: str = "noise") -> NeedleExample:
    """Passkey retrieval: a 5-digit pass key hidden at ``depth`` in filler; the prompt ends with
    "The pass key is" and the model must continue with the key."""
    check_positive_int("context_length", context_length)
    check_depth(depth)
    check_haystack(haystack)
    value = str(random.Random(f"passkey-value-{seed}").randint(10_000, 99_999))
    needle = Needle(PASSKEY_NEEDLE.format(value=value), value, None)
    return build_example("passkey", tokenizer, context_length, float(depth), seed, haystack,
                         PASSKEY_INTRO, PASSKEY_QUESTION, [(float(depth), needle)])


def make_mk_niah_example(tokenizer, context_length: int, depth: float, seed: int = 0, num_needles: int = 4,
                         haystack: str = "text") -> NeedleExample:
    """Multi-key NIAH (RULER MK-NIAH; S-NIAH with ``num_needles=1``): ``num_needles`` sentences
    "The special magic number for <key> is <7 digits>." in filler; the asked needle is at
    ``depth``, the others at random depths; the prompt ends by asking for the asked key's number."""
    check_positive_int("context_length", context_length)
    check_depth(depth)
    check_haystack(haystack)
    check_positive_int("num_needles", num_needles)
    max_needles = len(KEY_ADJECTIVES) * len(KEY_NOUNS)
    if num_needles > max_needles:
        raise ValueError(f"num_needles must be <= {max_needles} (distinct keys), got {num_needles}")
    rng = random.Random(f"mk_niah-needles-{seed}")
    pairs = rng.sample([(a, n) for a in KEY_ADJECTIVES for n in KEY_NOUNS], num_needles)
    values = rng.sample(range(1_000_000, 10_000_000), num_needles)
    needles = []
    for i, ((adjective, noun), value) in enumerate(zip(pairs, values)):
        key = f"{adjective}-{noun}"
        needle_depth = float(depth) if i == 0 else rng.random()
        needles.append((needle_depth, Needle(NIAH_NEEDLE.format(key=key, value=value), str(value), key)))
    question = NIAH_QUESTION.format(key=needles[0][1].key)
    return build_example("mk_niah", tokenizer, context_length, float(depth), seed, haystack,
                         NIAH_INTRO, question, needles)


def example_seed(seed: int, task: str, context_length: int, depth: float, index: int) -> int:
    """A per-example seed that depends only on the cell, not on which other cells are asked for."""
    return zlib.crc32(f"{seed}/{task}/{context_length}/{depth!r}/{index}".encode())


def generate_examples(task: str, tokenizer, context_lengths: Iterable[int], depths: Iterable[float],
                      examples_per_cell: int = 1, seed: int = 0, haystack: str | None = None,
                      num_needles: int = 4) -> list[NeedleExample]:
    """Examples for every (context length, depth) cell. ``haystack`` defaults to 'noise' for
    passkey (the original task) and 'text' for mk_niah (as RULER's essays)."""
    check_task(task)
    check_positive_int("examples_per_cell", examples_per_cell)
    context_lengths, depths = list(context_lengths), list(depths)
    if not context_lengths or not depths:
        raise ValueError(f"context_lengths and depths must be non-empty, got {context_lengths!r} and {depths!r}")
    for depth in depths:
        check_depth(depth)
    examples = []
    for length in context_lengths:
        for depth in depths:
            for index in range(examples_per_cell):
                cell_seed = example_seed(seed, task, length, float(depth), index)
                if task == "passkey":
                    examples.append(make_passkey_example(tokenizer, length, depth, cell_seed, haystack or "noise"))
                else:
                    examples.append(make_mk_niah_example(tokenizer, length, depth, cell_seed, num_needles,
                                                         haystack or "text"))
    return examples


# ---------------------------------------------------------------------------------------------
# evaluator


def is_correct(output: str, answer: str) -> bool:
    """The answer occurs in the output as a whole number (``12345`` does not match ``123456``)."""
    return re.search(rf"(?<!\d){re.escape(answer)}(?!\d)", output) is not None


def depth_label(depth: float) -> str:
    return f"{depth:g}"


def summarize(records: Sequence[dict]) -> dict:
    """Accuracy overall, per task, and per task x context length x depth (JSON-ready: grid keys
    are strings, e.g. grid["passkey"]["512"]["0.5"])."""
    if not records:
        raise ValueError("no examples to summarize: examples must be non-empty")
    mean = lambda rows: sum(r["correct"] for r in rows) / len(rows)
    by_task, by_cell = defaultdict(list), defaultdict(list)
    for record in records:
        by_task[record["task"]].append(record)
        by_cell[record["task"], record["context_length"], record["depth"]].append(record)
    grid = {task: {} for task in by_task}
    cells = []
    for (task, length, depth), rows in sorted(by_cell.items()):
        grid[task].setdefault(str(length), {})[depth_label(depth)] = mean(rows)
        cells.append({"task": task, "context_length": length, "depth": depth, "accuracy": mean(rows),
                      "num_examples": len(rows)})
    return {"accuracy": mean(records), "num_examples": len(records),
            "accuracy_by_task": {task: mean(rows) for task, rows in by_task.items()},
            "grid": grid, "cells": cells, "records": list(records)}


def evaluate(examples: Sequence[NeedleExample], answer_fn: Callable[[NeedleExample], str],
             progress: bool = True) -> dict:
    """Ask ``answer_fn`` every example and score it (see ``summarize`` for the report)."""
    if not examples:
        raise ValueError("examples must be non-empty")
    records = []
    for example in tqdm(examples, desc="long-context eval", disable=not progress):
        output = answer_fn(example)
        if not isinstance(output, str):
            raise ValueError(f"answer_fn must return a str, got {type(output).__name__}")
        records.append({"task": example.task, "context_length": example.context_length, "depth": example.depth,
                        "seed": example.seed, "num_tokens": example.num_tokens,
                        "needle_token_start": example.needle.token_start, "answer": example.answer,
                        "output": output, "correct": is_correct(output, example.answer)})
    return summarize(records)


def hf_answer_fn(model, tokenizer, max_new_tokens: int = 12, stop_after_number: bool = True
                 ) -> Callable[[NeedleExample], str]:
    """An answer function that runs greedy ``model.generate`` on the prompt (one example at a
    time, no padding) and returns the decoded new tokens. With ``stop_after_number`` generation
    stops once a number has been written and followed by another character (every answer here
    is a number), which saves decoding steps without changing what is scored."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    check_positive_int("max_new_tokens", max_new_tokens)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    class NumberWritten(StoppingCriteria):
        def __init__(self, prompt_length: int):
            self.prompt_length = prompt_length

        def __call__(self, input_ids, scores, **kwargs):
            texts = tokenizer.batch_decode(input_ids[:, self.prompt_length:], skip_special_tokens=True)
            return torch.tensor([re.search(r"\d\D", text) is not None for text in texts], device=input_ids.device)

    def answer(example: NeedleExample) -> str:
        inputs = tokenizer(example.prompt, return_tensors="pt").to(model.device)
        prompt_length = inputs["input_ids"].shape[1]
        stopping = StoppingCriteriaList([NumberWritten(prompt_length)] if stop_after_number else [])
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_token_id,
                                    stopping_criteria=stopping)
        return tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True)

    return answer


def example_to_dict(example: NeedleExample) -> dict:
    return asdict(example)


__all__ = [
    "HAYSTACKS", "TASKS", "Needle", "NeedleExample", "evaluate", "example_to_dict", "generate_examples",
    "hf_answer_fn", "is_correct", "make_mk_niah_example", "make_passkey_example", "summarize",
]
