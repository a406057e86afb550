"""MQAR sweep in the form of Zoology's figure: test accuracy vs model width, one curve per mixer,
one panel per (sequence length, kv pairs). Every mixer sits in the same Hope block (2 layers, a
SwiGLU MLP whose width brings the model within 2% of the titans model's parameters at that width)
and is trained the same way.

Each cell (variant, width, task) first trains with the first seed at every --learning-rates; a
run stops early once its validation accuracy reaches --stop-accuracy; the rate with the best
validation accuracy is chosen (while it is the lowest or highest tried, one more rate 3x beyond);
then the other seeds run at the chosen rate. What is reported is the accuracy on test sequences
that no choice has seen. A sanity check runs first: attention must reach --sanity-accuracy
(validation) in the sanity setting, otherwise the script refuses to compare (exit status 2).

    python -m evaluation.mqar.run_mqar_sweep                   # the docs' sweep (1 CPU thread)
    python -m evaluation.mqar.run_mqar_sweep --variants titans titans_conv_2 --widths 128 --output a.json
    python -m evaluation.mqar.run_mqar_sweep --resume --merge-from b.json --output a.json     # a parallel job

Variants: the mixers of hope_hf.evaluation.mqar.MIXER_VARIANTS (attention, gated_deltanet,
titans, titans_static, hybrid) and the titans ablations of ABLATIONS below (one change each).
Writes outputs/mqar_sweep.json (evaluation/results/ with --commit-results: the results header,
the sanity run, the chosen rate per cell and every run with its validation curve) and
mqar_sweep.png (test accuracy vs width) beside it.
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch

from evaluation.lib.cli import add_options
from evaluation.lib.models import matched_width
from evaluation.lib.plots import pyplot, save_figure
from evaluation.lib.results import ResultsFile, add_output_arguments, command_line, output_path
from evaluation.lib.sweep import grid, rate_search, tuned_summary
from hope_hf.evaluation.mqar import MIXER_VARIANTS, MQARTask, mqar_model, train_mqar

NAME = "mqar_sweep"
# a resumed sweep may ask for other cells (and reuse or merge sanity runs); the rest must agree
VARYING = ("variants", "widths", "ablation_widths", "tasks", "learning_rates", "max_rates", "seeds", "sanity_from",
           "merge_from", "threads", "commit_results", "sanity_accuracy")
MATCH_TO = "titans"  # every variant's MLP is sized to this variant's parameter count
CELL = ("variant", "width", "seq_len", "num_kv_pairs")

# Titans with one modelling choice changed (HopeConfig fields; defaults in brackets).
ABLATIONS = {
    "titans_init_std_0.1": dict(titans_memory_init_std=0.1),  # [initializer_range 0.02]: k != v at start
    "titans_init_std_0.3": dict(titans_memory_init_std=0.3),
    "titans_decay_0.9": dict(titans_decay_init_min=0.9),  # [0.99 .. 0.999 over heads; docs/mqar.md]
    "titans_eta_0.9": dict(titans_eta_init=0.9),  # [0.5 of eta_max]
    "titans_chunk_4": dict(titans_chunk_size=4),  # [16 here]
    "titans_chunk_32": dict(titans_chunk_size=32),
    "titans_chunk_64": dict(titans_chunk_size=64),
    "titans_chunk_128": dict(titans_chunk_size=128),
    "titans_conv_2": dict(titans_conv_size=2),  # [4]
    "titans_conv_8": dict(titans_conv_size=8),
    "titans_value_proj": dict(titans_value_projection=True),  # [False]: values from their own input W_v x
    "titans_raw_values": dict(titans_normalize_values=False),  # [True]: values not l2-normalised
    "titans_deep": dict(titans_memory_depth=2),  # [1]: a two-layer MLP main memory (issue 30)
    "titans_value_proj_conv_2": dict(titans_value_projection=True, titans_conv_size=2),  # the two best above
}


def variant_spec(name: str) -> tuple[str, dict]:
    """(mixer variant, config overrides) of a variant name."""
    if name in MIXER_VARIANTS:
        return name, {}
    return "titans", ABLATIONS[name]


def parse_task(text: str) -> tuple[int, int]:
    seq_len, pairs = text.lower().split("x")
    return int(seq_len), int(pairs)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["attention", "gated_deltanet", "titans", "hybrid"],
                        choices=[*MIXER_VARIANTS, *ABLATIONS])
    parser.add_argument("--widths", nargs="+", type=int, default=[128])
    parser.add_argument("--ablation-widths", nargs="+", type=int, default=[128],
                        help="the widths at which the titans ablations (ABLATIONS) run")
    parser.add_argument("--tasks", nargs="+", type=parse_task, default=[(64, 8)], help="SEQLENxPAIRS, e.g. 64x8 256x32")
    parser.add_argument("--learning-rates", nargs="+", type=float, default=[1e-3, 3e-3, 1e-2],
                        help="every cell tries these with the first seed (edges extended up to --max-rates)")
    parser.add_argument("--max-rates", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--stop-accuracy", type=float, default=0.99,
                        help="a run ends early once its validation accuracy reaches this")
    add_options(parser, vocab_size=128, num_layers=2, head_dim=32, titans_chunk_size=16, batch_size=32, eval_every=100,
                eval_examples=256)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="seeds of the sweep's runs; the first one chooses the rate and runs the sanity check")
    parser.add_argument("--sanity", nargs=4, type=float, default=[128, 64, 8, 1e-3], metavar=("WIDTH", "SEQ", "PAIRS", "LR"),
                        help="attention's sanity setting (trained for --sanity-steps)")
    parser.add_argument("--sanity-steps", type=int, default=4000)
    parser.add_argument("--sanity-accuracy", type=float, default=0.99)
    parser.add_argument("--sanity-from", type=Path, default=None,
                        help="reuse the sanity run recorded in this sweep JSON (same settings required) instead of rerunning it")
    parser.add_argument("--merge-from", type=Path, default=None,
                        help="with --resume: add the runs of another sweep's JSON (e.g. one run in parallel with its own "
                             "--output), with its command and duration, before running the requested cells")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    add_output_arguments(parser, NAME)  # --resume: keep the output's sanity run and runs, skip the cells it has
    return parser.parse_args(argv)


def config_fields(args, variant: str, width: int, intermediate_size: int | None = None) -> dict:
    fields = {"hidden_size": width, "num_layers": args.num_layers, "head_dim": args.head_dim,
              "titans_chunk_size": args.titans_chunk_size, **variant_spec(variant)[1]}  # an ablation may set the chunk size
    return fields if intermediate_size is None else {**fields, "intermediate_size": intermediate_size}


def parameter_count(args, variant: str, task: MQARTask, width: int, intermediate_size: int | None = None) -> int:
    with torch.device("meta"):
        model = mqar_model(variant_spec(variant)[0], task, **config_fields(args, variant, width, intermediate_size))
    return sum(p.numel() for p in model.parameters())


def matched_mlp(args, variant: str, task: MQARTask, width: int, tolerance: float = 0.02) -> int:
    """The MLP width that brings ``variant`` within ``tolerance`` of MATCH_TO's parameters (at the
    default MLP width 2 x width); raises if none does."""
    target = parameter_count(args, MATCH_TO, task, width)
    mlp = matched_width(lambda m: parameter_count(args, variant, task, width, m), target, multiple=1)
    count = parameter_count(args, variant, task, width, mlp)
    if abs(count / target - 1) > tolerance:
        raise ValueError(f"{variant} at width {width}: no MLP width comes within {tolerance:.0%} of {MATCH_TO}'s "
                         f"{target:,} parameters (best {count:,} at MLP width {mlp})")
    return mlp


def train_cell(args, variant: str, width: int, seq_len: int, pairs: int, learning_rate: float, steps: int,
               seed: int) -> dict:
    """One training run; returns its record (settings, validation and test accuracy, curve, seconds)."""
    mixer, overrides = variant_spec(variant)
    task = MQARTask(vocab_size=args.vocab_size, seq_len=seq_len, num_kv_pairs=pairs)
    mlp = matched_mlp(args, variant, task, width)
    fields = config_fields(args, variant, width, mlp)
    start = time.perf_counter()
    run = train_mqar(lambda: mqar_model(mixer, task, **fields), task, steps=steps, batch_size=args.batch_size,
                     learning_rate=learning_rate, eval_every=args.eval_every, eval_examples=args.eval_examples,
                     seed=seed, description=f"{variant} w{width} {seq_len}x{pairs} lr {learning_rate:g} seed {seed}",
                     stop_at_accuracy=args.stop_accuracy)
    return {"variant": variant, "mixer": mixer, "overrides": overrides, "width": width, "seq_len": seq_len,
            "num_kv_pairs": pairs, "intermediate_size": mlp, "learning_rate": learning_rate, "seed": seed,
            "steps": steps, "steps_run": run["steps_run"], "accuracy": run["final_accuracy"],
            "test_accuracy": run["test_accuracy"], "num_parameters": run["num_parameters"],
            "seconds": round(time.perf_counter() - start, 1), "load_average": [round(x, 2) for x in os.getloadavg()],
            "eval": [{k: round(v, 4) if isinstance(v, float) else v for k, v in e.items()} for e in run["eval"]]}


def cell_of(run: dict) -> tuple:
    """What makes two runs the same (a resumed or merged sweep skips runs it has)."""
    return (*(run[k] for k in CELL), run["learning_rate"], run["seed"])


def sweep_groups(args) -> list[dict]:
    """The sweep's cells (variant, width, task); ablations only at --ablation-widths."""
    cells = grid(task=args.tasks, width=args.widths, variant=args.variants)
    return [{"variant": c["variant"], "width": c["width"], "seq_len": c["task"][0], "num_kv_pairs": c["task"][1]}
            for c in cells if c["variant"] not in ABLATIONS or c["width"] in args.ablation_widths]


def summary_of(runs: list[dict], seeds: list[int]) -> dict:
    groups = list({tuple(r[k] for k in CELL): {k: r[k] for k in CELL} for r in runs}.values())
    return tuned_summary(runs, groups, seeds, "accuracy", ("accuracy", "test_accuracy", "steps_run"),
                         rate_key="learning_rate", higher_is_better=True)


def plot(chosen: list[dict], title: str, path: Path) -> None:
    """Test accuracy vs width, one line per variant through the mean over seeds, a dot per seed."""
    tasks = sorted({(r["seq_len"], r["num_kv_pairs"]) for r in chosen})
    fig, axes = pyplot().subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    variants = list(dict.fromkeys(r["variant"] for r in chosen))
    for ax, (seq_len, pairs) in zip(axes[0], tasks):
        for i, variant in enumerate(variants):
            mine = sorted((r for r in chosen if (r["variant"], r["seq_len"], r["num_kv_pairs"]) == (variant, seq_len, pairs)),
                          key=lambda r: r["width"])
            if not mine:
                continue
            nudged = [r["width"] * 1.015 ** (i - (len(variants) - 1) / 2) for r in mine]  # equal points stay visible
            line, = ax.plot(nudged, [r["test_accuracy"]["mean"] for r in mine], marker="o", label=variant,
                            color=f"C{i % 10}")  # a variant keeps its colour in every panel
            for x, r in zip(nudged, mine):
                values = r["test_accuracy"]["values"]
                ax.scatter([x] * len(values), values, s=8, color=line.get_color(), alpha=0.6)
        ax.axhline(1 / pairs, color="gray", linestyle=":", linewidth=1, label="chance 1/pairs")
        widths = sorted({r["width"] for r in chosen if (r["seq_len"], r["num_kv_pairs"]) == (seq_len, pairs)})
        ax.set(xscale="log", xlabel="model width", ylabel="test answer accuracy", ylim=(0, 1.02),
               title=f"seq len {seq_len}, {pairs} kv pairs")
        ax.set_xticks(widths, [str(w) for w in widths], minor=False)
        ax.set_xticks([], minor=True)
        ax.grid(alpha=0.3)
    legend = {}  # every variant of every panel, once
    for ax in axes[0]:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(name, handle)
    axes[0][-1].legend(legend.values(), legend.keys(), fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def recorded_sanity(sanity: dict, source, width: int, seq_len: int, pairs: int, learning_rate: float,
                    steps: int) -> dict:
    """The sanity run of an earlier sweep (``source``), if it was made with the settings asked for now."""
    asked = dict(width=width, seq_len=seq_len, num_kv_pairs=pairs, learning_rate=learning_rate, steps=steps)
    if any(sanity[key] != value for key, value in asked.items()):
        raise SystemExit(f"--sanity-from {source}: its sanity run does not match {asked}")
    return {**sanity, "reused_from": str(source)}


def write_report(results: ResultsFile, args) -> None:
    """The JSON (every run, the chosen rate per cell, the duration so far) and the PNG."""
    summary = summary_of(results.runs, args.seeds)
    results.save(summary=summary)
    if summary["chosen"]:
        plot(summary["chosen"], f"MQAR: test accuracy, each cell at its rate chosen on validation, <= {args.steps} steps "
             f"of batch {args.batch_size}; line: mean over seeds", results.path.with_suffix(".png"))


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = command_line("evaluation.mqar.run_mqar_sweep", argv)
    settings = {**vars(args), "tasks": [f"{s}x{p}" for s, p in args.tasks]}
    settings.pop("output")
    path = output_path(args, NAME)
    resumed = args.resume and path.exists()
    if args.merge_from is not None and not resumed:
        raise SystemExit("--merge-from needs --resume and an existing --output to merge into")
    results = ResultsFile(path, command, settings, resume=args.resume, varying=VARYING)

    width, seq_len, pairs, lr = int(args.sanity[0]), int(args.sanity[1]), int(args.sanity[2]), args.sanity[3]
    if resumed:  # the output's own sanity run
        sanity = recorded_sanity(results.fields["sanity"], path, width, seq_len, pairs, lr, args.sanity_steps)
    elif args.sanity_from is not None:
        sanity = recorded_sanity(json.loads(args.sanity_from.read_text())["sanity"], args.sanity_from, width, seq_len,
                                 pairs, lr, args.sanity_steps)
    else:
        sanity = train_cell(args, "attention", width, seq_len, pairs, lr, args.sanity_steps, args.seeds[0])
    sanity["passed"] = sanity["accuracy"] >= args.sanity_accuracy
    results.save(sanity=sanity)
    if not sanity["passed"]:
        print(f"sanity check failed: attention reached {sanity['accuracy']:.3f} < {args.sanity_accuracy} "
              f"(width {width}, {seq_len}x{pairs}, lr {lr:g}, {args.sanity_steps} steps); not comparing")
        raise SystemExit(2)

    if args.merge_from is not None:
        results.merge(args.merge_from, cell_of)
    while cells := rate_search(results.runs, sweep_groups(args), args.learning_rates, args.seeds, "accuracy",
                               rate_key="learning_rate", higher_is_better=True, max_rates=args.max_rates):
        for cell in cells:
            results.add(train_cell(args, cell["variant"], cell["width"], cell["seq_len"], cell["num_kv_pairs"],
                                   cell["learning_rate"], args.steps, cell["seed"]))
            write_report(results, args)  # progress survives an interruption
    write_report(results, args)

    report = json.loads(results.path.read_text())
    print(f"\nsanity: attention {sanity['accuracy']:.3f} at step {sanity['steps_run']}")
    print(f"{'variant':<22} {'task':>7} {'width':>6} {'lr':>7} {'validation':>10} {'test (mean, min..max over seeds)':>34}")
    for row in report["summary"]["chosen"]:
        test = row["test_accuracy"]
        print(f"{row['variant']:<22} {row['seq_len']:>4}x{row['num_kv_pairs']:<2} {row['width']:>6} "
              f"{row['learning_rate']:>7g} {row['accuracy']['mean']:>10.3f} {test['mean']:>15.3f}, "
              f"{test['min']:.3f}..{test['max']:.3f} ({len(test['values'])} seeds)")
    print(f"{report['duration_s']:.0f} s; wrote {results.path} and {results.path.with_suffix('.png')}")
    return report


if __name__ == "__main__":
    main()
