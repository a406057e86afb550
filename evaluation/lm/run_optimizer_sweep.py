"""Optimizer sweep on the LM comparison's models: AdamW, torch.optim.Muon (+ AdamW for embeddings,
the LM head and non-matrix parameters) and the project's M3 (+ the same AdamW part), each at
several learning rates (M3's eps and momentum decay are axes too), same tokens in the same order,
several seeds. Each model and optimizer's best rate is chosen on the validation loss (mean over
seeds); its test loss is what is reported.

    python -m evaluation.lm.run_optimizer_sweep                        # Hope titans + Llama, English
    python -m evaluation.lm.run_optimizer_sweep --models hope_titans --seeds 0 1 2 --m3-eps 1e-2 1e-3 --resume

Writes outputs/lm_optimizer_sweep_<corpus>.json and .png (see evaluation.lib.results).
"""

import argparse
from dataclasses import asdict

import torch

from evaluation.lib.corpora import corpus_tag, prepare_corpus
from evaluation.lib.models import MODELS, add_shape_arguments, build_model, matched_models, shape_from_args
from evaluation.lib.plots import pyplot, save_figure
from evaluation.lib.results import ResultsFile, add_output_arguments, command_line, jsonable, output_path, run_cells
from evaluation.lib.sweep import at_edge, best_rows, grid, summarize
from evaluation.lib.training import OptimizerSpec, RunSettings, train_lm

# matrix learning rates; each list spans 30x
DEFAULT_LRS = {"adamw": [1e-3, 3e-3, 1e-2, 3e-2], "muon": [3e-3, 1e-2, 3e-2, 1e-1], "m3": [3e-4, 1e-3, 3e-3, 1e-2]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="english")
    parser.add_argument("--models", nargs="+", default=["hope_titans", "llama"], choices=MODELS)
    parser.add_argument("--optimizers", nargs="+", default=list(DEFAULT_LRS), choices=list(DEFAULT_LRS))
    for name, lrs in DEFAULT_LRS.items():
        parser.add_argument(f"--lrs-{name}", nargs="+", type=float, default=lrs, help=f"default {lrs}")
    parser.add_argument("--m3-eps", nargs="+", type=float, default=[1e-2], help="M3's eps values to sweep")
    parser.add_argument("--m3-momentum-decay", nargs="+", type=float, default=[1.0],
                        help="M3's momentum decay mu values to sweep (1.0: Algorithm 1's summed momenta)")
    parser.add_argument("--m3-variance", nargs="+", default=["sum"], choices=["sum", "ema"],
                        help="M3's second moment: sum (Algorithm 1) and/or ema (Adam's moving average)")
    parser.add_argument("--adamw-lr", type=float, default=3e-3, help="lr of the AdamW part of muon and m3")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-blocks", type=int, default=32)
    parser.add_argument("--final-eval-blocks", type=int, default=128)
    add_shape_arguments(parser)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-progress", action="store_true")
    add_output_arguments(parser, "lm_optimizer_sweep_<corpus>")
    return parser.parse_args(argv)


def optimizer_grid(args) -> list[OptimizerSpec]:
    specs = []
    for name in args.optimizers:
        m3_axes = grid(eps=args.m3_eps, decay=args.m3_momentum_decay, variance=args.m3_variance) if name == "m3" else [{}]
        for lr in getattr(args, f"lrs_{name}"):
            for axes in m3_axes:
                specs.append(OptimizerSpec(name=name, lr=lr, adamw_lr=lr if name == "adamw" else args.adamw_lr,
                                           m3_eps=axes.get("eps", 1e-2), m3_momentum_decay=axes.get("decay", 1.0),
                                           m3_variance=axes.get("variance", "sum")))
    return specs


def label(spec: dict) -> str:
    if spec["name"] != "m3":
        return spec["name"]
    return (f"m3 eps={spec['m3_eps']:g}" + ("" if spec["m3_momentum_decay"] == 1.0 else f" decay={spec['m3_momentum_decay']:g}")
            + ("" if spec.get("m3_variance", "sum") == "sum" else f" variance={spec['m3_variance']}"))


def summary_of(runs: list[dict]) -> dict:
    rows = summarize([{**r, "lr": r["optimizer"]["lr"]} for r in runs], by=("model", "optimizer_label", "lr"),
                     metrics=("final_validation_loss", "final_test_loss"))
    best = best_rows(rows, within=("model", "optimizer_label"), choose_on="final_validation_loss")
    for row in best:
        row["at_edge"] = at_edge(row, rows, ("model", "optimizer_label"), "lr")
    return {"by_lr": rows, "best": best}


def plot(rows: list[dict], path) -> None:
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = pyplot().subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for name in dict.fromkeys(r["optimizer_label"] for r in rows if r["model"] == model):
            mine = sorted((r for r in rows if (r["model"], r["optimizer_label"]) == (model, name)), key=lambda r: r["lr"])
            loss = [r["final_validation_loss"] for r in mine]
            line, = ax.plot([r["lr"] for r in mine], [x["mean"] for x in loss], marker="o", label=name)
            ax.fill_between([r["lr"] for r in mine], [x["min"] for x in loss], [x["max"] for x in loss],
                            color=line.get_color(), alpha=0.2)
        ax.set(xscale="log", xlabel="learning rate (matrices)", ylabel="final validation loss", title=model)
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path, dpi=110)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = shape_from_args(args)
    sizes = matched_models(args.models, shape)
    _, blocks = prepare_corpus(args.corpus, shape.vocab_size, shape.block_size)
    path = output_path(args, f"lm_optimizer_sweep_{corpus_tag(args.corpus)}")
    axes = ("models", "optimizers", "seeds", "m3_eps", "m3_momentum_decay", "m3_variance", *(f"lrs_{n}" for n in DEFAULT_LRS))
    results = ResultsFile(path, command_line(__spec__.name, argv), vars(args), args.resume, args.device,
                          varying=(*axes, "threads", "no_progress", "commit_results"))
    for run in results.runs:  # a run written before a field of OptimizerSpec existed has its default
        run["optimizer"] = jsonable(asdict(OptimizerSpec(**run["optimizer"])))
    results.save(shape=asdict(shape), parameters={**results.fields.get("parameters", {}), **sizes})
    cells = grid(seed=args.seeds, model=args.models, optimizer=[asdict(s) for s in optimizer_grid(args)])

    def run_cell(cell):
        settings = RunSettings(steps=args.steps, batch_size=args.batch_size, eval_every=args.eval_every,
                               eval_blocks=args.eval_blocks, final_eval_blocks=args.final_eval_blocks,
                               device=args.device, optimizer=OptimizerSpec(**cell["optimizer"]))
        torch.manual_seed(cell["seed"])
        model = build_model(cell["model"], shape, sizes[cell["model"]]["mlp_size"])
        name = f"{cell['model']} {label(cell['optimizer'])} lr={cell['optimizer']['lr']:g} seed {cell['seed']}"
        run = train_lm(model, blocks, settings, name, not args.no_progress)
        print(f"{name}: validation {run['final_validation_loss']:.4f}", flush=True)
        return {"optimizer_label": label(cell["optimizer"]), **run}

    run_cells(results, cells, run_cell, after=lambda results: results.save(summary=summary_of(results.runs)))
    summary = summary_of(results.runs)
    results.save(summary=summary)
    plot(summary["by_lr"], path.with_suffix(".png"))
    for row in summary["best"]:
        print(f"{row['model']:12} {row['optimizer_label']:14} best lr {row['lr']:g}: validation "
              f"{row['final_validation_loss']['mean']:.4f}, test {row['final_test_loss']['mean']:.4f}"
              f"{' AT THE EDGE of the grid' if row['at_edge'] else ''}")
    print(f"wrote {path} and {path.with_suffix('.png').name}")
    results.save()  # the duration with the plot
    return results.saved


if __name__ == "__main__":
    main()
