"""MQAR sweep in the form of Zoology's figure: held-out accuracy vs model width, one curve per
mixer, one panel per (sequence length, kv pairs). Every mixer sits in the same Hope block
(2 layers, CMS MLP) and is trained the same way; each cell reports the mixer at its best
learning rate. A sanity check runs first: attention must reach --sanity-accuracy in the
sanity setting, otherwise the script refuses to compare (exit status 2).

    python -m evaluation.mqar.run_mqar_sweep                   # the README's sweep (1 CPU thread)
    python -m evaluation.mqar.run_mqar_sweep --variants titans titans_init_std_0.1 --widths 64
    python -m evaluation.mqar.run_mqar_sweep --resume --variants titans --widths 128 --seeds 1 2   # add runs to the JSON

Variants: the mixers of hope_hf.evaluation.mqar.MIXER_VARIANTS (attention, gated_deltanet,
titans, titans_static, hybrid) and the titans ablations of ABLATIONS below (one change each).
Writes outputs/mqar_sweep.json (evaluation/results/ with --commit-results; the results header,
the sanity run, the best run per cell and every run with its eval curve) and mqar_sweep.png
(accuracy vs width) beside it.
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch

from evaluation.lib.cli import add_options
from evaluation.lib.plots import pyplot, save_figure
from evaluation.lib.results import ResultsFile, add_output_arguments, command_line, output_path
from evaluation.lib.sweep import grid
from hope_hf import HopeConfig
from hope_hf.evaluation.mqar import MIXER_VARIANTS, MQARTask, mqar_model, mqar_model_config, train_mqar

NAME = "mqar_sweep"
# a resumed sweep may ask for other cells (and reuse or merge sanity runs); the rest must agree
VARYING = ("variants", "widths", "ablation_widths", "tasks", "learning_rates", "steps", "plot_steps", "seeds",
           "sanity_from", "merge_from", "threads", "commit_results", "sanity_accuracy")

NO_TITANS = ("attention", "gated_deltanet")  # mixers without a titans layer (no titans init to record)

# Titans with one modelling choice changed (HopeConfig fields; defaults in brackets).
ABLATIONS = {
    "titans_init_std_0.1": dict(titans_memory_init_std=0.1),  # [initializer_range 0.02]: k != v at start
    "titans_init_std_0.3": dict(titans_memory_init_std=0.3),
    "titans_decay_0.9": dict(titans_decay_init_min=0.9),  # [0.99 .. 0.999 over heads; 0.9 before the recall fix, docs/mqar.md]
    "titans_decay_0.99": dict(titans_decay_init_min=0.99),  # the default since the recall fix
    "titans_eta_0.9": dict(titans_eta_init=0.9),  # [0.5 of eta_max]
    "titans_chunk_64": dict(titans_chunk_size=64),  # [16 here]
    "titans_chunk_4": dict(titans_chunk_size=4),
    "titans_conv_2": dict(titans_conv_size=2),  # [4]
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
    parser.add_argument("--variants", nargs="+", default=[*MIXER_VARIANTS, "titans_init_std_0.3", "titans_decay_0.99"],
                        choices=[*MIXER_VARIANTS, *ABLATIONS])
    parser.add_argument("--widths", nargs="+", type=int, default=[128, 64])
    parser.add_argument("--ablation-widths", nargs="+", type=int, default=[64],
                        help="the widths at which the titans ablations (ABLATIONS) run")
    parser.add_argument("--tasks", nargs="+", type=parse_task, default=[(64, 8)], help="SEQLENxPAIRS, e.g. 64x8 256x32")
    parser.add_argument("--learning-rates", nargs="+", type=float, default=[1e-3],
                        help="tried in order; a cell stops trying once one reaches --stop-accuracy")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--plot-steps", type=int, default=2000, help="the PNG shows the runs of this budget")
    parser.add_argument("--stop-accuracy", type=float, default=0.99, help="a run ends early once it evaluates at this")
    add_options(parser, vocab_size=128, num_layers=2, head_dim=32, titans_chunk_size=16, batch_size=32, eval_every=100,
                eval_examples=256)
    parser.add_argument("--seed", type=int, default=0, help="the sanity run's seed")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds of the sweep's runs (default: --seed)")
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


def train_cell(args, variant: str, width: int, seq_len: int, pairs: int, learning_rate: float, steps: int,
               seed: int) -> dict:
    """One training run; returns its record (settings, accuracy, eval curve, seconds)."""
    mixer, overrides = variant_spec(variant)
    task = MQARTask(vocab_size=args.vocab_size, seq_len=seq_len, num_kv_pairs=pairs)
    fields = {"hidden_size": width, "num_layers": args.num_layers, "head_dim": args.head_dim,
              "titans_chunk_size": args.titans_chunk_size, **overrides}  # an ablation may set the chunk size
    decay_init_min = None if mixer in NO_TITANS else mqar_model_config(mixer, task, **fields).titans_decay_init_min
    start = time.perf_counter()
    run = train_mqar(lambda: mqar_model(mixer, task, **fields), task, steps=steps, batch_size=args.batch_size,
                     learning_rate=learning_rate, eval_every=args.eval_every, eval_examples=args.eval_examples,
                     seed=seed, description=f"{variant} w{width} {seq_len}x{pairs} lr {learning_rate:g} seed {seed}",
                     stop_at_accuracy=args.stop_accuracy)
    return {"variant": variant, "mixer": mixer, "overrides": overrides,
            "titans_decay_init_min": decay_init_min, "width": width, "seq_len": seq_len,
            "num_kv_pairs": pairs, "learning_rate": learning_rate, "seed": seed, "steps": steps, "steps_run": run["steps_run"],
            "accuracy": run["final_accuracy"], "num_parameters": run["num_parameters"],
            "seconds": round(time.perf_counter() - start, 1), "load_average": [round(x, 2) for x in os.getloadavg()],
            "eval": [{k: round(v, 4) if isinstance(v, float) else v for k, v in e.items()} for e in run["eval"]]}


def run_label(run: dict) -> str:
    """The cell a run belongs to: an ablation whose overrides are now HopeConfig's defaults counts as its
    mixer (titans_decay_0.99 is titans since the recall fix), and a run made with an initial decay that is no
    longer the default says so (each run records the decay it was made with)."""
    overrides, decay = run["overrides"], run.get("titans_decay_init_min")
    # the sweep sets the chunk size itself (--titans-chunk-size), so HopeConfig's default is not its baseline
    if overrides and "titans_chunk_size" not in overrides and all(
            getattr(HopeConfig, field) == value for field, value in overrides.items()):
        return run["mixer"]
    if decay is None or decay == HopeConfig.titans_decay_init_min or "titans_decay_init_min" in overrides:
        return run["variant"]
    return f"{run['variant']} (decay_init_min {decay:g})"


def cell_label(variant: str) -> str:
    """The label a run of ``variant`` made now gets (with today's HopeConfig defaults)."""
    mixer, overrides = variant_spec(variant)
    return run_label({"variant": variant, "mixer": mixer, "overrides": overrides})


def cell_of(run: dict) -> tuple:
    """What makes two runs the same cell of the sweep (a resumed sweep skips cells it has)."""
    return (run_label(run), run["width"], run["seq_len"], run["num_kv_pairs"], run["learning_rate"], run["steps"],
            run.get("seed", 0))


def best_by_cell(runs: list[dict]) -> dict:
    """(label, seq_len, pairs, width, steps, seed) -> the run with the highest accuracy over learning rates."""
    best = {}
    for run in runs:
        key = (run_label(run), run["seq_len"], run["num_kv_pairs"], run["width"], run["steps"], run.get("seed", 0))
        if key not in best or run["accuracy"] > best[key]["accuracy"]:
            best[key] = run
    return best


def plot(best: dict, tasks, steps: int, title: str, path: Path) -> None:
    """Accuracy vs width, one line per variant through the mean over seeds (runs of ``steps``), a dot per seed."""
    fig, axes = pyplot().subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    runs = {key: run for key, run in best.items() if key[4] == steps}
    for ax, (seq_len, pairs) in zip(axes[0], tasks):
        variants = list(dict.fromkeys(key[0] for key in runs))
        for i, variant in enumerate(variants):
            by_width = {}
            for (v, s, p, w, _, _), r in runs.items():
                if (v, s, p) == (variant, seq_len, pairs):
                    by_width.setdefault(w, []).append(r["accuracy"])
            if not by_width:
                continue
            widths = sorted(by_width)  # nudged apart per variant so that equal points stay visible
            nudged = [w * 1.015 ** (i - (len(variants) - 1) / 2) for w in widths]
            line, = ax.plot(nudged, [sum(by_width[w]) / len(by_width[w]) for w in widths], marker="o", label=variant,
                            color=f"C{i % 10}")  # a variant keeps its colour in every panel
            for x, w in zip(nudged, widths):
                ax.scatter([x] * len(by_width[w]), by_width[w], s=8, color=line.get_color(), alpha=0.6)
        ax.axhline(1 / pairs, color="gray", linestyle=":", linewidth=1, label="chance 1/pairs")
        ax.set(xscale="log", xlabel="model width", ylabel="held-out answer accuracy", ylim=(0, 1.02),
               title=f"seq len {seq_len}, {pairs} kv pairs")
        widths = sorted({key[3] for key in runs if key[1:3] == (seq_len, pairs)})
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


def best_rows(runs: list[dict]) -> list[dict]:
    return [{"variant": v, "seq_len": s, "num_kv_pairs": p, "width": w, "seed": seed, "accuracy": r["accuracy"],
             "learning_rate": r["learning_rate"], "steps": steps, "steps_run": r["steps_run"]}
            for (v, s, p, w, steps, seed), r in best_by_cell(runs).items()]


def write_report(results: ResultsFile, args) -> None:
    """The JSON (every run, the best per cell, the duration so far) and the PNG."""
    results.save(best=best_rows(results.runs))
    tasks = sorted({(r["seq_len"], r["num_kv_pairs"]) for r in results.runs}) or args.tasks
    plot(best_by_cell(results.runs), tasks, args.plot_steps,
         f"MQAR, best lr per run, <= {args.plot_steps} steps of batch {args.batch_size}; line: mean over seeds",
         results.path.with_suffix(".png"))


def sweep_cells(args) -> list[dict]:
    """The sweep's cells in order (learning rates innermost); ablations only at --ablation-widths."""
    cells = grid(seed=args.seeds or [args.seed], task=args.tasks, width=args.widths, variant=args.variants,
                 learning_rate=args.learning_rates)
    return [c for c in cells if c["variant"] not in ABLATIONS or c["width"] in args.ablation_widths]


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
        sanity = train_cell(args, "attention", width, seq_len, pairs, lr, args.sanity_steps, args.seed)
    sanity["passed"] = sanity["accuracy"] >= args.sanity_accuracy
    results.save(sanity=sanity)
    if not sanity["passed"]:
        print(f"sanity check failed: attention reached {sanity['accuracy']:.3f} < {args.sanity_accuracy} "
              f"(width {width}, {seq_len}x{pairs}, lr {lr:g}, {args.sanity_steps} steps); not comparing")
        raise SystemExit(2)

    if args.merge_from is not None:
        results.merge(args.merge_from, cell_of, command)
    done = {cell_of(r) for r in results.runs}
    sanity_key = ("attention", width, seq_len, pairs, lr, args.sanity_steps, args.seed)
    # a group (label, width, task, steps, seed) is solved once one of its learning rates reached --stop-accuracy
    solved = {cell_of(r)[:4] + cell_of(r)[5:] for r in results.runs if r["accuracy"] >= args.stop_accuracy}
    for cell in sweep_cells(args):
        (seq, kv) = cell["task"]
        key = (cell_label(cell["variant"]), cell["width"], seq, kv, cell["learning_rate"], args.steps, cell["seed"])
        if key[:4] + key[5:] in solved or key in done:
            continue
        if key == sanity_key:
            run = {k: v for k, v in sanity.items() if k != "passed"}  # the same run: reuse it
        else:
            run = train_cell(args, cell["variant"], cell["width"], seq, kv, cell["learning_rate"], args.steps,
                             cell["seed"])
        results.add(run)
        write_report(results, args)  # progress survives an interruption
        if run["accuracy"] >= args.stop_accuracy:
            solved.add(key[:4] + key[5:])
    write_report(results, args)

    report = json.loads(results.path.read_text())
    print(f"\nsanity: attention {sanity['accuracy']:.3f} at step {sanity['steps_run']}")
    print(f"{'variant':<22} {'task':>7} {'width':>6} {'seed':>4} {'acc':>6} {'lr':>7} {'steps':>6}")
    for row in report["best"]:
        print(f"{row['variant']:<22} {row['seq_len']:>4}x{row['num_kv_pairs']:<2} {row['width']:>6} {row['seed']:>4} "
              f"{row['accuracy']:>6.3f} {row['learning_rate']:>7g} {row['steps_run']:>6}")
    print(f"{report['duration_s']:.0f} s; wrote {results.path} and {results.path.with_suffix('.png')}")
    return report


if __name__ == "__main__":
    main()
