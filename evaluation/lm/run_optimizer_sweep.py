"""Optimizer sweep on the LM comparison's models: AdamW, torch.optim.Muon (+ AdamW for embeddings,
the LM head and non-matrix parameters) and the project's M3 (+ the same AdamW part), same tokens in
the same order. Every (model, optimizer setting) is a group: M3's eps, momentum decay and second
moment are settings. Each group is put at its own best learning rate as in the LM comparison: its
rates with the first seed, an edge extended 3x while the best lies there, then the other seeds at
the rate chosen on the validation loss; the test loss of that rate is what is reported.

    python -m evaluation.lm.run_optimizer_sweep                        # Hope titans, tiny preset, English
    python -m evaluation.lm.run_optimizer_sweep --preset small --steps 300 --output a.json
    python -m evaluation.lm.run_optimizer_sweep --resume --merge-from b.json --output a.json   # a parallel job

Writes outputs/lm_optimizer_sweep_<corpus>_<preset>.json and .png (see evaluation.lib.results).
"""

import argparse
from dataclasses import asdict, replace
from pathlib import Path

import torch

from evaluation.lib.corpora import corpus_tag, prepare_corpus
from evaluation.lib.models import ALL_MODELS, add_shape_arguments, build_model, matched_models, shape_from_args
from evaluation.lib.plots import pyplot, save_figure
from evaluation.lib.results import ResultsFile, add_output_arguments, command_line, jsonable, output_path, run_cells
from evaluation.lib.sweep import grid, rate_search, tuned_summary
from evaluation.lib.training import OptimizerSpec, RunSettings, train_lm
from evaluation.lm.run_lm_comparison import PRESETS

# the matrices' first rates with the first seed; a best at an edge is extended 3x (up to --max-rates)
DEFAULT_LRS = {"adamw": [1e-3, 3e-3, 1e-2], "muon": [3e-3, 1e-2, 3e-2], "m3": [3e-6, 1e-5, 3e-5]}
M3_NONE_LRS = [1e-3, 3e-3, 1e-2]  # M3 with variance="none" steps at Muon's scale (no division by sqrt(V))
CHOOSE_ON = "final_validation_loss"
REPORT = ("final_validation_loss", "final_test_loss", "tokens_per_second")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small"], help="the LM comparison's shape and schedule")
    parser.add_argument("--corpus", default="english")
    parser.add_argument("--models", nargs="+", default=["hope_titans"], choices=ALL_MODELS)
    parser.add_argument("--optimizers", nargs="+", default=list(DEFAULT_LRS), choices=list(DEFAULT_LRS))
    for name, lrs in DEFAULT_LRS.items():
        parser.add_argument(f"--lrs-{name}", nargs="+", type=float, default=lrs, help=f"default {lrs}")
    parser.add_argument("--lrs-m3-none", nargs="+", type=float, default=M3_NONE_LRS,
                        help=f"M3's first rates with --m3-variance none, default {M3_NONE_LRS}")
    parser.add_argument("--max-rates", type=int, default=6, help="at most this many rates per group, edges extended")
    parser.add_argument("--m3-eps", nargs="+", type=float, default=[1e-5], help="M3's eps values (each a group)")
    parser.add_argument("--m3-momentum-decay", nargs="+", type=float, default=[1.0, 0.95],
                        help="M3's momentum decay mu values (1.0: Algorithm 1's summed momenta)")
    parser.add_argument("--m3-variance", nargs="+", default=["sum", "ema"], choices=["sum", "ema", "none"],
                        help="M3's second moment: sum (Algorithm 1), ema (Adam's moving average), none (Muon's step)")
    parser.add_argument("--adamw-lr", type=float, default=3e-3, help="lr of the AdamW part of muon and m3")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="model initialisation seeds; the first one chooses the learning rate")
    parser.add_argument("--steps", type=int, help="override the preset")
    parser.add_argument("--batch-size", type=int, help="override the preset")
    parser.add_argument("--eval-every", type=int, help="override the preset")
    parser.add_argument("--eval-blocks", type=int, default=32)
    parser.add_argument("--final-eval-blocks", type=int, default=256)
    add_shape_arguments(parser)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--merge-from", type=Path, help="with --resume: add the runs of another job's JSON")
    add_output_arguments(parser, "lm_optimizer_sweep_<corpus>_<preset>")
    return parser.parse_args(argv)


def optimizer_settings(args) -> list[OptimizerSpec]:
    """Every optimizer setting of the sweep, its lr a placeholder (NaN) that each run sets."""
    specs = []
    for name in args.optimizers:
        m3_axes = grid(eps=args.m3_eps, decay=args.m3_momentum_decay, variance=args.m3_variance) if name == "m3" else [{}]
        for axes in m3_axes:
            specs.append(OptimizerSpec(name=name, lr=float("nan"), adamw_lr=float("nan") if name == "adamw" else args.adamw_lr,
                                       m3_eps=axes.get("eps", 1e-2), m3_momentum_decay=axes.get("decay", 1.0),
                                       m3_variance=axes.get("variance", "sum")))
    return specs


def with_lr(spec: OptimizerSpec, lr: float) -> OptimizerSpec:
    return replace(spec, lr=lr, adamw_lr=lr if spec.name == "adamw" else spec.adamw_lr)


def first_rates(args, spec: OptimizerSpec) -> list[float]:
    return args.lrs_m3_none if spec.name == "m3" and spec.m3_variance == "none" else getattr(args, f"lrs_{spec.name}")


def label(spec: dict) -> str:
    if spec["name"] != "m3":
        return spec["name"]
    return (f"m3 eps={spec['m3_eps']:g}" + ("" if spec["m3_momentum_decay"] == 1.0 else f" decay={spec['m3_momentum_decay']:g}")
            + ("" if spec.get("m3_variance", "sum") == "sum" else f" variance={spec['m3_variance']}"))


def cell_of(run: dict) -> tuple:
    return run["model"], run["optimizer_label"], run["lr"], run["seed"]


def groups_of(runs: list[dict], models: list[str], labels: list[str]) -> list[dict]:
    """One group per (model, optimizer label): those asked for now, then those only in the file."""
    asked = [{"model": m, "optimizer_label": name} for m in models for name in labels]
    recorded = [{"model": r["model"], "optimizer_label": r["optimizer_label"]} for r in runs]
    return list({(g["model"], g["optimizer_label"]): g for g in asked + recorded}.values())


def plot(by_rate: list[dict], path) -> None:
    """Validation loss of the first seed against the matrices' rate, one line per optimizer setting."""
    models = list(dict.fromkeys(r["model"] for r in by_rate))
    fig, axes = pyplot().subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for name in dict.fromkeys(r["optimizer_label"] for r in by_rate if r["model"] == model):
            mine = [r for r in by_rate if (r["model"], r["optimizer_label"]) == (model, name)]
            ax.plot([r["lr"] for r in mine], [r[CHOOSE_ON] for r in mine], marker="o", label=name)
        ax.set(xscale="log", xlabel="learning rate (matrices)", ylabel="final validation loss (first seed)", title=model)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path, dpi=110)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    shape = shape_from_args(args, preset["shape"])
    sizes = matched_models(args.models, shape, tolerance=0.02)
    _, blocks = prepare_corpus(args.corpus, shape.vocab_size, shape.block_size)
    path = output_path(args, f"lm_optimizer_sweep_{corpus_tag(args.corpus)}_{args.preset}")
    if args.merge_from is not None and not (args.resume and path.exists()):
        raise SystemExit("--merge-from needs --resume and an existing --output to merge into")
    axes = ("models", "optimizers", "seeds", "max_rates", "m3_eps", "m3_momentum_decay", "m3_variance",
            *(f"lrs_{n}" for n in DEFAULT_LRS), "lrs_m3_none")
    results = ResultsFile(path, command_line(__spec__.name, argv), vars(args), args.resume, args.device,
                          varying=(*axes, "threads", "no_progress", "commit_results", "merge_from"))
    if args.merge_from is not None:
        other = results.merge(args.merge_from, cell_of)
        results.fields["parameters"] = {**other.get("parameters", {}), **results.fields.get("parameters", {})}
    for run in results.runs:  # a run written before a field of OptimizerSpec existed has its default
        run["optimizer"] = jsonable(asdict(OptimizerSpec(**run["optimizer"])))
    settings = RunSettings(steps=args.steps or preset["steps"], batch_size=args.batch_size or preset["batch_size"],
                           eval_every=args.eval_every or preset["eval_every"], eval_blocks=args.eval_blocks,
                           final_eval_blocks=args.final_eval_blocks, device=args.device)
    results.save(shape=asdict(shape), parameters={**results.fields.get("parameters", {}), **sizes},
                 run_settings={k: v for k, v in asdict(settings).items() if k != "optimizer"})
    specs = {label(asdict(s)): s for s in optimizer_settings(args)}

    def run_cell(cell):
        spec = with_lr(specs[cell["optimizer_label"]], cell["lr"])
        torch.manual_seed(cell["seed"])
        model = build_model(cell["model"], shape, sizes[cell["model"]]["mlp_size"])
        name = f"{cell['model']} {cell['optimizer_label']} lr={cell['lr']:g} seed {cell['seed']}"
        run = train_lm(model, blocks, replace(settings, optimizer=spec), name, not args.no_progress)
        print(f"{name}: validation {run['final_validation_loss']:.4f}", flush=True)
        return {"optimizer": asdict(spec), **run}

    def summarize_and_plot(results):
        summary = tuned_summary(results.runs, groups_of(results.runs, args.models, list(specs)), args.seeds, CHOOSE_ON,
                                REPORT)
        results.save(summary=summary)
        plot(summary["by_rate"], path.with_suffix(".png"))
        return summary

    for spec_label, spec in specs.items():  # each optimizer family searches from its own rates
        mine = [{"model": m, "optimizer_label": spec_label} for m in args.models]
        while cells := rate_search(results.runs, mine, first_rates(args, spec), args.seeds, CHOOSE_ON,
                                   max_rates=args.max_rates):
            run_cells(results, cells, run_cell, after=summarize_and_plot)
    summary = summarize_and_plot(results)
    for row in summary["chosen"]:
        test = row["final_test_loss"]
        std = f" +- {test['std']:.4f}" if test["std"] is not None else ""
        print(f"{row['model']:12} {row['optimizer_label']:28} lr {row['lr']:<8g}{' (edge)' if row['at_edge'] else ''} "
              f"validation {row['final_validation_loss']['mean']:.4f}, test {test['mean']:.4f}{std}")
    print(f"wrote {path} and {path.with_suffix('.png').name}")
    results.save()  # the duration with the plot
    return results.saved


if __name__ == "__main__":
    main()
