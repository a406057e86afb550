"""Build the data of the offline lm-eval tasks (hope_hf/evaluation/tasks/*.yaml, package data) from
the text shipped in hope_hf/data, deterministically: the same input text always gives
byte-identical files.

    python -m evaluation.build_local_tasks                    # writes hope_hf/evaluation/tasks/data/*.jsonl
    python -m evaluation.build_local_tasks --output-dir DIR   # somewhere else (tests build twice and compare)

Every task uses only the HELD-OUT chapters of the shipped text: the documents that the training
pipeline keeps out of training with its defaults (`hope_hf.training.build_datasets`,
eval_fraction=0.05, seed=0, as in scripts/train.py and scripts/continual_pretrain.py), so a model
trained by this project's scripts is evaluated on chapters it never saw.

* ppl_en.jsonl / ppl_es.jsonl: one held-out chapter per line ({"text": ...}), English (World
  English Bible) and Spanish (Reina-Valera 1909); rolling-loglikelihood perplexity like
  lm-eval's `wikitext`.
* lambada_en.jsonl: LAMBADA-style last-word passages from the English held-out chapters. For each
  sentence with at least MIN_CONTEXT_WORDS words of the same chapter before its last word, the
  passage is the smallest run of whole sentences ending with it that gives that context, and the
  target is the sentence's last word (punctuation after it dropped). Kept only when the target
  is alphabetic, at least MIN_TARGET_CHARS long, not one of the FREQUENT_WORDS most frequent
  words of the English text (no "you", "him", "them", "Yahweh"), and occurs as a word in the
  context: as in LAMBADA, the broader passage is what makes the word predictable.
"""

import argparse
import collections
import json
import re
from pathlib import Path

from hope_hf.data import sample_text_path
from hope_hf.evaluation.lm_eval_entry import LOCAL_TASKS_DIR
from hope_hf.training.data import load_documents

TASKS_DIR = LOCAL_TASKS_DIR  # hope_hf/evaluation/tasks of the hope_hf imported
DEFAULT_OUTPUT_DIR = TASKS_DIR / "data"
EVAL_FRACTION = 0.05  # hope_hf.training.build_datasets' defaults: the held-out documents of training
SPLIT_SEED = 0
MIN_CONTEXT_WORDS = 40
MIN_TARGET_CHARS = 3
FREQUENT_WORDS = 30
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][”’\"'])\s+")
TRAILING = " .,;:!?”’\"'"


def held_out_chapters(name: str) -> list[dict]:
    """The held-out chapters of a shipped text, as {"text", "source"} rows in file order."""
    path = sample_text_path(name)
    documents = load_documents([str(path)])
    held_out = set(documents.train_test_split(test_size=EVAL_FRACTION, seed=SPLIT_SEED)["test"]["text"])
    lines = path.read_text(encoding="utf-8").splitlines()
    return [{"text": line, "source": f"{path.name}:{number}"}
            for number, line in enumerate(lines, start=1) if line in held_out]


def sentences(text: str) -> list[str]:
    """Whitespace-normalised sentences of a chapter."""
    return [" ".join(s.split()) for s in SENTENCE_END.split(text) if s.strip()]


def frequent_words(text: str, count: int = FREQUENT_WORDS) -> set[str]:
    """The `count` most frequent words of a text, lower-cased (ties broken by first occurrence)."""
    counts = collections.Counter(w.lower() for w in re.findall(r"[A-Za-z]+", text))
    return {word for word, _ in counts.most_common(count)}


def last_word_passage(chapter: list[str], end: int, excluded: set[str]) -> str | None:
    """The passage ending with sentence `end`, cut just after its last word, or None when the
    chapter has too little context before it or the last word is not a usable target."""
    final = chapter[end].rstrip(TRAILING)
    target = final.split(" ")[-1]
    if not (target.isascii() and target.isalpha() and len(target) >= MIN_TARGET_CHARS):
        return None
    if target.lower() in excluded:
        return None
    context = final.split(" ")[:-1]
    start = end
    while len(context) < MIN_CONTEXT_WORDS and start > 0:
        start -= 1
        context = chapter[start].split(" ") + context
    if len(context) < MIN_CONTEXT_WORDS or target not in {w.strip(TRAILING + "“‘(") for w in context}:
        return None
    return " ".join(context + [target])


def lambada_rows(chapters: list[dict], excluded: set[str]) -> list[dict]:
    """LAMBADA-style rows ({"text", "source"}) from every sentence end of the chapters."""
    rows = []
    for chapter in chapters:
        parts = sentences(chapter["text"])
        for end in range(len(parts)):
            passage = last_word_passage(parts, end, excluded)
            if passage is not None:
                rows.append({"text": passage, "source": chapter["source"]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object a line, keys sorted, UTF-8, '\\n' line ends: byte-stable across runs."""
    text = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    path.write_bytes(text.encode("utf-8"))


def build(output_dir: Path = DEFAULT_OUTPUT_DIR) -> dict[str, int]:
    """Write ppl_en.jsonl, ppl_es.jsonl and lambada_en.jsonl into output_dir; rows per file."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    english = held_out_chapters("web_en_sample")
    common = frequent_words(sample_text_path("web_en_sample").read_text(encoding="utf-8"))
    files = {
        "ppl_en.jsonl": english,
        "ppl_es.jsonl": held_out_chapters("rv1909_es_sample"),
        "lambada_en.jsonl": lambada_rows(english, excluded=common),
    }
    for name, rows in files.items():
        if not rows:
            raise ValueError(f"no rows for {name}: the shipped text changed?")
        write_jsonl(output_dir / name, rows)
    return {name: len(rows) for name, rows in files.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    args = parser.parse_args(argv)
    for name, count in build(args.output_dir).items():
        size = (args.output_dir / name).stat().st_size
        print(f"{args.output_dir / name}: {count} rows, {size:,} bytes")


if __name__ == "__main__":
    main()
