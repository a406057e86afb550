"""Test-time learning on a real model: SmolLM2-135M-Instruct retrofitted with one new fast CMS level
(as the main job does, output starting at zero) reads the last tokens of a held-out document with
``InContextLearner``; next-token loss per segment with and without test-time updates, per rule.

    python evaluation/continual/run_test_time_learning.py            # writes evaluation/results/test_time_learning_smollm2.{json,png}

Rules name which levels learn: "new level" = only the new level (the pretrained MLP, level 0, is
frozen: period None); "both levels" = the pretrained MLPs learn too (dynamic evaluation of the MLPs).

With ``--hope DIR`` (a model saved by ``scripts/train.py``, e.g. outputs/train/final) the reader is
that Hope model and its own CMS levels learn, at their config periods (in segments), by HOPE_RULES;
its English document is Revelation 14-21 of the World English Bible, which the embedded training
text (the Bible's first 300 KB) does not contain.

    python scripts/train.py && python evaluation/continual/run_test_time_learning.py --hope outputs/train/final
"""

import argparse
import json
import lzma
import os
import platform
import sys
import sysconfig
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from hope_hf import InContextLearner
from hope_hf.data import sample_text_path, smollm2_gguf_path
from hope_hf.training.continual import load_model_and_tokenizer

RESULTS = Path(__file__).resolve().parents[1] / "results"
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
FULL_ENGLISH = Path(__file__).resolve().parents[1] / "lm" / "data" / "web_en.txt.xz"  # the whole World English Bible
# Python source of the interpreter's own standard library: fixed files, read in this order
CODE_FILES = ["argparse.py", "textwrap.py", "difflib.py"]


def documents(tokenizer, english_from_full_bible: bool = False) -> dict[str, torch.Tensor]:
    """Held-out long documents, token ids (T,): Spanish and English Bible text and standard-library code.
    English is the shipped sample, or Revelation 14-21 of the whole Bible for a model trained on that sample."""
    if english_from_full_bible:  # Revelation 14-21: the last chapter also carries the translation's glossary
        chapters = [line for line in lzma.decompress(FULL_ENGLISH.read_bytes()).decode("utf-8").splitlines() if line.strip()]
        english = "\n".join(chapters[-9:-1])
    else:
        english = sample_text_path("web_en_sample").read_text()
    texts = {"Spanish": sample_text_path("rv1909_es_sample").read_text(), "English": english}
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts["Python code"] = "\n".join((stdlib / name).read_text() for name in CODE_FILES if (stdlib / name).exists())
    return {name: tokenizer(text, return_tensors="pt").input_ids[0] for name, text in texts.items()}


def halves(losses: list[float]) -> tuple[float, float]:
    middle = len(losses) // 2
    return sum(losses[:middle]) / middle, sum(losses[middle:]) / (len(losses) - middle)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="a Llama-CMS directory (e.g. from scripts/meta_learn_fast_level.py); default: SmolLM2 retrofitted")
    parser.add_argument("--hope", type=Path, default=None,
                        help="a Hope model directory (scripts/train.py's output_dir/final): read with its own levels, HOPE_RULES")
    parser.add_argument("--tokens", type=int, default=1024, help="read the last TOKENS tokens of each document")
    parser.add_argument("--segment-size", type=int, default=128)
    parser.add_argument("--rules", nargs="+", default=None, help="labels of RULES to run (default: all); plain reading always runs")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="default: evaluation/results/test_time_learning_smollm2 (_hope with --hope)")
    args = parser.parse_args()
    if args.hope and args.model:
        parser.error("--hope and --model name two different readers; give one")
    all_rules = HOPE_RULES if args.hope else RULES
    unknown = set(args.rules or []) - {label for label, _ in all_rules}
    if unknown:
        parser.error(f"--rules: unknown {sorted(unknown)}; allowed: {[label for label, _ in all_rules]}")
    args.out = args.out or str(RESULTS / ("test_time_learning_hope" if args.hope else "test_time_learning_smollm2"))
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.hope:
        model, tokenizer = AutoModelForCausalLM.from_pretrained(args.hope), AutoTokenizer.from_pretrained(args.hope)
    else:
        model, tokenizer = load_model_and_tokenizer(args.model or smollm2_gguf_path(), new_level_size=384,
                                                    pretrained_period=1_000_000)
    model.eval()
    runs = []
    docs = {name: ids[-args.tokens :] for name, ids in documents(tokenizer, english_from_full_bible=bool(args.hope)).items()}
    rules = [(label, options) for label, options in all_rules if args.rules is None or label in args.rules or options["lr"] == 0]
    for label, options in tqdm(rules, desc="rules"):
        learner = InContextLearner(model, segment_size=args.segment_size, **options)
        for document, ids in docs.items():
            # one document at a time: per-row fast weights of every MLP (rule "both levels") and their
            # Adam moments take several GB per row, and batching gains nothing here on CPU (1.06x)
            losses = learner.read(ids[None])[0].segment_losses
            first, second = halves(losses)
            runs.append({"document": document, "rule": label, "options": options, "segment_losses": losses,
                         "first_half": first, "second_half": second})
            print(f"{document:12s} {label:28s} first half {first:.4f}  second half {second:.4f}", flush=True)
        write(runs, args, start)


def write(runs, args, start) -> None:
    """The JSON and PNG of the runs so far (rewritten after every rule)."""
    for run in runs:
        plain = next(r for r in runs if r["document"] == run["document"] and r["options"]["lr"] == 0)
        run["second_half_vs_plain"] = run["second_half"] / plain["second_half"] - 1
        run["first_segment_vs_plain"] = run["segment_losses"][0] / plain["segment_losses"][0] - 1
        first_half = len(plain["segment_losses"]) // 2
        run["worst_first_half_segment_vs_plain"] = max(
            loss / base - 1 for loss, base in zip(run["segment_losses"][:first_half], plain["segment_losses"])
        )
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "model": str(args.hope or args.model or "SmolLM2-135M-Instruct + fast level 384"),
        "tokens": args.tokens, "segment_size": args.segment_size, "duration_s": round(time.perf_counter() - start, 1),
        "load_average": os.getloadavg(), "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
        "runs": runs,
    }
    Path(args.out + ".json").write_text(json.dumps(result, indent=1))
    plot(runs, Path(args.out + ".png"))
    print(f"wrote {args.out}.json and .png in {result['duration_s']} s")


def plot(runs, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    documents = list(dict.fromkeys(r["document"] for r in runs))
    fig, axes = plt.subplots(1, len(documents), figsize=(6 * len(documents), 4), squeeze=False)
    for ax, document in zip(axes[0], documents):
        for run in (r for r in runs if r["document"] == document):
            ax.plot(range(1, len(run["segment_losses"]) + 1), run["segment_losses"], marker="o", ms=3, label=run["rule"])
        ax.set(title=f"{document}: loss per segment while reading", xlabel="segment", ylabel="next-token loss")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
