"""Learning while reading long documents: a model's CMS rules against dynamic evaluation.

    bash scripts/run_main.sh                                   # saves outputs/continual_pretrain/final
    python -m evaluation.continual.run_test_time_learning      # reads with it: outputs/test_time_learning_smollm2.{json,png}
    python scripts/train.py && python -m evaluation.continual.run_test_time_learning --hope outputs/train/final

The reader is a Llama-CMS directory (--model, default the main job's saved SmolLM2-CMS) or a Hope
model saved by scripts/train.py (--hope). It reads test documents of --tokens tokens (4,096) of
Spanish, English and standard-library code (validation documents: --validation-tokens, 2,048) in
segments of --segment-size, and every rule is scored by the loss of each segment, against plain
reading of the same document:

* "calibrated default": ``InContextLearner(model)``, the rule the model's config carries (the main
  job and scripts/train.py calibrate it on the package's validation documents);
* "cms": the CMS levels, at the model's config periods or every level after every segment, with
  SGD, Adam or rule "rms" (dynamic evaluation's normalisation without its decay) at each rate of
  the family's grid;
* "dynamic evaluation, all" / "dynamic evaluation, mlp": Krause et al.'s rule (RMS-normalised steps,
  decay toward the original weights) on every parameter / on the MLPs (CMS levels) only, each rate
  and decay of the grid; the RMS statistics come from training-split blocks of the three corpora.

Every family's rule is chosen on VALIDATION documents (the lowest mean relative second-half loss
over the three domains); the test documents are read only with the chosen rules. Both splits
come from evaluation.lib.corpora, leaving out every document the package's own domains hold (the
text the main job and scripts/train.py train and calibrate on). The cost of each rule (seconds per
token and the extra memory: the reader's state and the tensors autograd saves per token) is
measured in the same run. Writes the JSON after every read (--resume skips what it holds) and a
PNG of loss against tokens read.
"""

import argparse
import json
import math
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from evaluation.lib.corpora import CORPORA, documents as corpus_documents, pack
from evaluation.lib.plots import pyplot, save_figure
from evaluation.lib.results import ResultsFile, add_output_arguments, command_line, output_path
from hope_hf.test_time import DynamicEvaluation, InContextLearner, gradient_statistics, parameter_names
from hope_hf.test_time.calibration import compare_with_plain, halves
from hope_hf.training.calibration import REPORT_FILE
from hope_hf.training.domains import domain_documents, split_documents

DOMAINS = {"Spanish": "spanish", "English": "english", "Python code": "code"}  # name in the results: corpus
LLAMA_CMS_GRID = {  # "cms": the new level (level 0, the pretrained MLP, frozen), or every level every segment
    "cms": [*(dict(rule="adam", lr=lr, max_grad_norm=1.0) for lr in (1e-5, 3e-5, 1e-4)),
            *(dict(rule="adam", lr=lr, max_grad_norm=1.0, periods="every level") for lr in (3e-6, 1e-5)),
            *(dict(rule="rms", lr=lr) for lr in (1e-5, 3e-5)),
            *(dict(rule="rms", lr=lr, periods="every level") for lr in (3e-6, 1e-5, 3e-5))],
    "dynamic evaluation, all": [dict(lr=lr, decay=decay) for lr in (1e-6, 3e-6, 1e-5, 3e-5) for decay in (0.0, 0.02)],
    "dynamic evaluation, mlp": [dict(lr=lr, decay=decay) for lr in (3e-6, 1e-5, 3e-5) for decay in (0.0, 0.02)],
}
HOPE_GRID = {
    "cms": [*(dict(rule="sgd", lr=lr) for lr in (1e-2, 1e-1, 3e-1)),
            *(dict(rule="adam", lr=lr, max_grad_norm=1.0) for lr in (1e-4, 1e-3, 3e-3, 1e-2)),
            *(dict(rule="rms", lr=lr) for lr in (3e-5, 1e-4, 1e-3))],
    "dynamic evaluation, all": [dict(lr=lr, decay=decay) for lr in (1e-5, 3e-5, 1e-4, 3e-4, 1e-3) for decay in (0.0, 0.02)],
    "dynamic evaluation, mlp": [dict(lr=lr, decay=decay) for lr in (3e-5, 1e-4, 3e-4, 1e-3) for decay in (0.0, 0.02)],
}
CALIBRATED, PLAIN = "calibrated default", "plain reading"
MAIN_JOB_MODEL = Path("outputs/continual_pretrain/final")


def seen_by_package() -> set[str]:
    """Documents the package's domains hold: all Spanish and English (the main job and
    scripts/train.py train on them) and the code validation split (calibration reads it)."""
    code_validation = split_documents(domain_documents("code"))["validation"]["text"]
    return {*domain_documents("spanish"), *domain_documents("english"), *code_validation}


def long_documents(tokenizer, split: str, tokens: int, count: int) -> dict[str, list[torch.Tensor]]:
    """{domain: ``count`` documents of ``tokens`` ids}: the corpus's ``split`` documents the package
    never saw, joined in order (EOS between) and cut into consecutive windows."""
    seen = seen_by_package()
    out = {}
    for name, corpus in DOMAINS.items():
        texts = [text for text in corpus_documents(corpus, split) if text not in seen]
        ids = pack(texts, tokenizer, tokens)
        if len(ids) < count:
            raise ValueError(f"{name} {split}: {len(ids)} windows of {tokens} tokens, fewer than the {count} asked for")
        out[name] = list(ids[:count])
    return out


@contextmanager
def saved_tensor_bytes(counter: list):
    """Adds to counter[0] the bytes of every tensor autograd saves for the backward within."""
    def pack_hook(tensor):
        counter[0] += tensor.numel() * tensor.element_size()
        return tensor
    with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda tensor: tensor):
        yield


def state_bytes(state, reader) -> int:
    """The reader's own tensors for one sequence: fast weights, Adam moments, initial states, and
    dynamic evaluation's statistics and decay rates."""
    tensors = [*state.fast_weights.values(), *state.initial_weights.values(),
               *(t for pair in state.moments.values() for t in pair)]
    if isinstance(reader, DynamicEvaluation):
        tensors += [*reader.statistics.values(), *reader.decay_rates.values()]
    return sum(t.numel() * t.element_size() for t in tensors)


def make_reader(model, family: str, options: dict, segment_size: int, statistics: dict):
    if family == CALIBRATED:
        return InContextLearner(model)
    if family == PLAIN:
        return InContextLearner(model, lr=0.0, segment_size=segment_size)
    if family == "cms":
        options = {"max_grad_norm": None, "periods": None, **options}
        if options["periods"] == "every level":
            options["periods"] = [1] * len(model.config.cms_levels)
        return InContextLearner(model, segment_size=segment_size, decay=0.0, statistics=statistics.get("mlp"), **options)
    which = family.rpartition(", ")[2]
    return DynamicEvaluation(model, statistics[which], segment_size=segment_size, **options)


def read(model, family: str, options: dict, ids: torch.Tensor, segment_size: int, statistics: dict) -> dict:
    reader = make_reader(model, family, options, segment_size, statistics)
    saved = [0]
    start = time.perf_counter()
    with saved_tensor_bytes(saved):
        state = reader.read(ids[None])[0]
    seconds = time.perf_counter() - start
    first, second = halves(state.segment_losses)
    return {"segment_losses": state.segment_losses, "first_half": first, "second_half": second,
            "segment_size": reader.segment_size, "resolved_options": reader.options, "seconds": seconds,
            "seconds_per_token": seconds / len(ids), "state_mb": state_bytes(state, reader) / 2**20,
            "autograd_saved_kb_per_token": saved[0] / len(ids) / 2**10}


def label(options: dict) -> str:
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in options.items())


def choose(runs: list[dict], family: str) -> dict:
    """The family's options with the lowest mean relative second-half loss on the validation documents."""
    by_options = {}
    for run in runs:
        if run["split"] == "validation" and run["family"] == family:
            by_options.setdefault(label(run["options"]), []).append(run)
    scores = {key: sum(r["vs_plain"]["second_half_vs_plain"] for r in rows) / len(rows) for key, rows in by_options.items()}
    best = min(scores, key=lambda key: (math.isnan(scores[key]), scores[key]))  # a diverged read (nan) is never best
    return {"options": by_options[best][0]["options"], "validation_mean_second_half_vs_plain": scores[best],
            "validation_scores": scores}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help=f"a Llama-CMS directory (default: {MAIN_JOB_MODEL}, the main job's)")
    parser.add_argument("--hope", type=Path, default=None, help="a Hope model directory (scripts/train.py's output_dir/final)")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per test document")
    parser.add_argument("--validation-tokens", type=int, default=2048, help="tokens per validation document (the choices)")
    parser.add_argument("--documents", type=int, default=1, help="documents per domain and split")
    parser.add_argument("--segment-size", type=int, default=128)
    parser.add_argument("--statistics-blocks", type=int, default=8,
                        help="training-split blocks (of --segment-size tokens) per corpus for dynamic evaluation's RMS")
    parser.add_argument("--families", nargs="+", default=None,
                        help=f"rule families to run (default: all); allowed: {[CALIBRATED, *LLAMA_CMS_GRID]}")
    parser.add_argument("--threads", type=int, default=None)
    add_output_arguments(parser, "test_time_learning_{smollm2|hope}")
    args = parser.parse_args(argv)
    if args.hope and args.model:
        parser.error("--hope and --model name two different readers; give one")
    args.model = None if args.hope else args.model or MAIN_JOB_MODEL
    unknown = set(args.families or []) - {CALIBRATED, *LLAMA_CMS_GRID}
    if unknown:
        parser.error(f"--families: unknown {sorted(unknown)}; allowed: {[CALIBRATED, *LLAMA_CMS_GRID]}")
    reader = args.hope or args.model
    if not (reader / "config.json").is_file():
        parser.error(f"{reader} holds no saved model: run {'scripts/train.py' if args.hope else 'bash scripts/run_main.sh'} first")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = output_path(args, "test_time_learning_hope" if args.hope else "test_time_learning_smollm2")
    results = ResultsFile(path, command_line("evaluation.continual.run_test_time_learning", argv),
                          {k: v for k, v in vars(args).items() if k != "output"}, resume=args.resume,
                          varying=("families", "threads", "commit_results"))
    source = args.hope or args.model
    model, tokenizer = AutoModelForCausalLM.from_pretrained(source).eval(), AutoTokenizer.from_pretrained(source)
    grid = HOPE_GRID if args.hope else LLAMA_CMS_GRID
    families = [f for f in grid if args.families is None or f in args.families]
    statistics = {}
    if any(f.startswith("dynamic") or f == "cms" for f in families):
        blocks = torch.cat([pack(corpus_documents(c, "train")[:50], tokenizer, args.segment_size)[: args.statistics_blocks]
                            for c in CORPORA])
        everything = gradient_statistics(model, blocks, parameter_names(model, "all"))
        statistics = {"all": everything, "mlp": {name: everything[name] for name in parameter_names(model, "mlp")}}
    report = source / REPORT_FILE  # how the model's own rule was chosen, if it was calibrated
    results.save(model=str(source), calibrated_default=model.config.test_time_learning,
                 calibration=json.loads(report.read_text()) if report.is_file() else None,
                 grid={f: grid[f] for f in families})
    docs = {split: long_documents(tokenizer, split, tokens, args.documents)
            for split, tokens in (("validation", args.validation_tokens), ("test", args.tokens))}

    def run(split: str, family: str, options: dict) -> None:
        for name, windows in docs[split].items():
            for index, ids in enumerate(windows):
                cell = {"split": split, "document": name, "index": index, "family": family, "options": options}
                record, ran = results.run(cell, lambda cell: read(model, family, options, ids, args.segment_size, statistics))
                if ran:
                    print(f"{split:10s} {name:11s} {family:24s} {label(options):34s} second half {record['second_half']:.4f}"
                          f"  {record['seconds']:.0f} s", flush=True)

    cells = [("validation", PLAIN, {}), *(("validation", f, o) for f in families for o in grid[f])]
    for split, family, options in tqdm(cells, desc="validation reads"):
        run(split, family, options)
        compare_all(results.runs)
    chosen = {family: choose(results.runs, family) for family in families}
    results.save(chosen_on_validation=chosen)
    test_families = [(PLAIN, {}), *([(CALIBRATED, {})] if args.families is None or CALIBRATED in args.families else []),
                     *((f, chosen[f]["options"]) for f in families)]
    for family, options in tqdm(test_families, desc="test reads"):
        run("test", family, options)
        compare_all(results.runs)
        # a resumed run with a longer grid may have read the test documents with an earlier choice: not reported
        reported = [r for r in results.runs if r["split"] == "test" and (r["family"], r["options"]) in test_families]
        results.save(summary=summarize(reported))
        plot(reported, path.with_suffix(".png"))
    results.save(complete=True)
    print(f"wrote {path} and .png")
    return results.saved


def compare_all(runs: list[dict]) -> None:
    """Each run against plain reading of the same document: loss and cost."""
    for run in runs:
        plain = next(r for r in runs if r["family"] == PLAIN and all(r[k] == run[k] for k in ("split", "document", "index")))
        run["vs_plain"] = {**compare_with_plain(run["segment_losses"], plain["segment_losses"]),
                           "time_per_token_ratio": run["seconds_per_token"] / plain["seconds_per_token"]}


def summarize(test_runs: list[dict]) -> dict:
    """Per test document and family: the second half and the worst first-half segment against plain
    reading, and the costs."""
    summary = {}
    for run in (r for r in test_runs if r["family"] != PLAIN):
        row = summary.setdefault(run["document"], {})
        row[run["family"]] = {k: run["vs_plain"][k] for k in ("second_half_vs_plain", "worst_first_half_segment_vs_plain",
                                                               "time_per_token_ratio")}
        row[run["family"]].update(state_mb=run["state_mb"], autograd_saved_kb_per_token=run["autograd_saved_kb_per_token"])
    return summary


def plot(test: list[dict], path: Path) -> None:
    """Test documents: loss of each segment against the tokens read by its end, every family."""
    names = list(dict.fromkeys(r["document"] for r in test))
    fig, axes = pyplot().subplots(1, len(names), figsize=(6 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        for run in (r for r in test if r["document"] == name):
            ends = [run["segment_size"] * (i + 1) for i in range(len(run["segment_losses"]))]
            tag = run["family"] if not run["options"] else f"{run['family']} ({label(run['options'])})"
            ax.plot(ends, run["segment_losses"], marker="o", ms=2, lw=1, label=tag)
        ax.set(title=f"{name}: loss per segment while reading (test)", xlabel="tokens read", ylabel="next-token loss")
        ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, bbox_inches=None)


if __name__ == "__main__":
    main()
