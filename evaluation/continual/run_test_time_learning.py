"""Test-time learning on a real model: SmolLM2-135M-Instruct retrofitted with one new fast CMS level
(as the main job does, output starting at zero) reads the last tokens of a held-out document with
``InContextLearner``; next-token loss per segment with and without test-time updates, per rule.

    python -m evaluation.continual.run_test_time_learning     # writes outputs/test_time_learning_smollm2.{json,png}

Rules name which levels learn: "new level" = only the new level (the pretrained MLP, level 0, is
frozen: period None); "both levels" = the pretrained MLPs learn too (dynamic evaluation of the MLPs).

The documents are the TEST splits of evaluation.lib.corpora, each joined into one long document:
Spanish (Reina-Valera 1909 chapters), English (World English Bible chapters; its last test
chapters, Revelation, lie outside the text the embedded Hope trains on) and Python code (the
test-split standard-library modules).

With ``--hope DIR`` (a model saved by ``scripts/train.py``, e.g. outputs/train/final) the reader is
that Hope model and its own CMS levels learn, at their config periods (in segments), by HOPE_RULES.

    python scripts/train.py && python -m evaluation.continual.run_test_time_learning --hope outputs/train/final

Writes outputs/test_time_learning_smollm2.json (_hope with --hope; evaluation/results/ with
--commit-results; the results header and one run per document and rule, written after each
rule, --resume skips the runs it has) and the PNG beside it.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from evaluation.lib.corpora import documents as corpus_documents
from evaluation.lib.plots import pyplot, save_figure
from evaluation.lib.results import ResultsFile, add_output_arguments, command_line, output_path
from hope_hf import InContextLearner
from hope_hf.data import smollm2_gguf_path
from hope_hf.training.continual import load_model_and_tokenizer

# (label, InContextLearner options); lr 0 is plain reading
NEW_LEVEL, BOTH_LEVELS = [None, 1], [1, 1]
RULES = [
    ("plain reading", dict(lr=0.0, periods=NEW_LEVEL)),
    ("new level: sgd lr 1e-4", dict(lr=1e-4, rule="sgd", periods=NEW_LEVEL)),
    ("new level: adam lr 1e-5", dict(lr=1e-5, rule="adam", max_grad_norm=1.0, periods=NEW_LEVEL)),
    ("new level: adam lr 3e-5", dict(lr=3e-5, rule="adam", max_grad_norm=1.0, periods=NEW_LEVEL)),
    ("both levels: adam lr 3e-6", dict(lr=3e-6, rule="adam", max_grad_norm=1.0, periods=BOTH_LEVELS)),
    ("both levels: adam lr 1e-5", dict(lr=1e-5, rule="adam", max_grad_norm=1.0, periods=BOTH_LEVELS)),
    ("both levels: adam lr 3e-5", dict(lr=3e-5, rule="adam", max_grad_norm=1.0, periods=BOTH_LEVELS)),
]
# a Hope model's own levels at their config periods; sgd 1e-2 is InContextLearner's default
HOPE_RULES = [
    ("plain reading", dict(lr=0.0)),
    ("sgd lr 1e-2 (default)", dict(lr=1e-2, rule="sgd")),
    ("sgd lr 1e-1", dict(lr=1e-1, rule="sgd")),
    ("adam lr 1e-4", dict(lr=1e-4, rule="adam", max_grad_norm=1.0)),
    ("adam lr 1e-3", dict(lr=1e-3, rule="adam", max_grad_norm=1.0)),
    ("adam lr 3e-3", dict(lr=3e-3, rule="adam", max_grad_norm=1.0)),
]
DOCUMENTS = {"Spanish": "spanish", "English": "english", "Python code": "code"}  # name: corpus


def documents(tokenizer) -> dict[str, torch.Tensor]:
    """The held-out long documents, token ids (T,): every corpus's test split, its documents joined in order."""
    return {name: tokenizer("\n".join(corpus_documents(corpus, "test")), return_tensors="pt").input_ids[0]
            for name, corpus in DOCUMENTS.items()}


def halves(losses: list[float]) -> tuple[float, float]:
    middle = len(losses) // 2
    return sum(losses[:middle]) / middle, sum(losses[middle:]) / (len(losses) - middle)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="a Llama-CMS directory (e.g. from scripts/meta_learn_fast_level.py); default: SmolLM2 retrofitted")
    parser.add_argument("--hope", type=Path, default=None,
                        help="a Hope model directory (scripts/train.py's output_dir/final): read with its own levels, HOPE_RULES")
    parser.add_argument("--tokens", type=int, default=1024, help="read the last TOKENS tokens of each document")
    parser.add_argument("--segment-size", type=int, default=128)
    parser.add_argument("--rules", nargs="+", default=None, help="labels of RULES to run (default: all); plain reading always runs")
    parser.add_argument("--threads", type=int, default=None)
    add_output_arguments(parser, "test_time_learning_{smollm2|hope}")
    args = parser.parse_args(argv)
    if args.hope and args.model:
        parser.error("--hope and --model name two different readers; give one")
    all_rules = HOPE_RULES if args.hope else RULES
    unknown = set(args.rules or []) - {label for label, _ in all_rules}
    if unknown:
        parser.error(f"--rules: unknown {sorted(unknown)}; allowed: {[label for label, _ in all_rules]}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    all_rules = HOPE_RULES if args.hope else RULES
    if args.threads:
        torch.set_num_threads(args.threads)
    path = output_path(args, "test_time_learning_hope" if args.hope else "test_time_learning_smollm2")
    results = ResultsFile(path, command_line("evaluation.continual.run_test_time_learning", argv),
                          {k: v for k, v in vars(args).items() if k != "output"}, resume=args.resume,
                          varying=("rules", "threads", "commit_results"))
    start = time.perf_counter()
    if args.hope:
        model, tokenizer = AutoModelForCausalLM.from_pretrained(args.hope), AutoTokenizer.from_pretrained(args.hope)
    else:
        model, tokenizer = load_model_and_tokenizer(args.model or smollm2_gguf_path(), new_level_size=384,
                                                    pretrained_period=1_000_000)
    model.eval()
    results.save(model=str(args.hope or args.model or "SmolLM2-135M-Instruct + fast level 384"))
    docs = {name: ids[-args.tokens :] for name, ids in documents(tokenizer).items()}
    rules = [(label, options) for label, options in all_rules if args.rules is None or label in args.rules or options["lr"] == 0]
    for label, options in tqdm(rules, desc="rules"):
        learner = InContextLearner(model, segment_size=args.segment_size, **options)
        for document, ids in docs.items():
            if results.has({"document": document, "rule": label}):
                continue  # --resume: already read
            # one document at a time: per-row fast weights of every MLP (rule "both levels") and their
            # Adam moments take several GB per row, and batching gains little here on CPU (docs/benchmarks.md)
            losses = learner.read(ids[None])[0].segment_losses
            first, second = halves(losses)
            results.add({"document": document, "rule": label, "options": options, "segment_losses": losses,
                         "first_half": first, "second_half": second})
            print(f"{document:12s} {label:28s} first half {first:.4f}  second half {second:.4f}", flush=True)
        compare_with_plain(results.runs)
        results.save()
        plot(results.runs, path.with_suffix(".png"))
        print(f"wrote {path} and .png in {time.perf_counter() - start:.1f} s")
    return json.loads(path.read_text())


def compare_with_plain(runs) -> None:
    """Each run's losses relative to plain reading of the same document (rewritten after every rule)."""
    for run in runs:
        plain = next(r for r in runs if r["document"] == run["document"] and r["options"]["lr"] == 0)
        run["second_half_vs_plain"] = run["second_half"] / plain["second_half"] - 1
        run["first_segment_vs_plain"] = run["segment_losses"][0] / plain["segment_losses"][0] - 1
        first_half = len(plain["segment_losses"]) // 2
        run["worst_first_half_segment_vs_plain"] = max(
            loss / base - 1 for loss, base in zip(run["segment_losses"][:first_half], plain["segment_losses"])
        )


def plot(runs, path: Path) -> None:
    documents = list(dict.fromkeys(r["document"] for r in runs))
    fig, axes = pyplot().subplots(1, len(documents), figsize=(6 * len(documents), 4), squeeze=False)
    for ax, document in zip(axes[0], documents):
        for run in (r for r in runs if r["document"] == document):
            ax.plot(range(1, len(run["segment_losses"]) + 1), run["segment_losses"], marker="o", ms=3, label=run["rule"])
        ax.set(title=f"{document}: loss per segment while reading", xlabel="segment", ylabel="next-token loss")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, bbox_inches=None)


if __name__ == "__main__":
    main()
