"""Small-scale language-model comparison: Llama, a Gated DeltaNet stack, Hope (titans), Hope
hybrid (titans + attention) and Hope-Attention at matched non-embedding parameter counts (within
2%), trained on the same tokens in the same order, each at its own best AdamW learning rate.

Every model first trains with the first seed at each of --learning-rates; while its best final
validation loss lies at the edge of the rates tried, one more rate 3x beyond is tried; then the
other seeds run at the chosen rate. The summary reports the test loss of the chosen rate over the
seeds (choices on validation, reports on test).

    python -m evaluation.lm.run_lm_comparison                              # English, tiny, 3 seeds
    python -m evaluation.lm.run_lm_comparison --corpus code --models llama hope_titans --resume
    python -m evaluation.lm.run_lm_comparison --preset small --output a.json    # one job of two ...
    python -m evaluation.lm.run_lm_comparison --preset small --resume --merge-from b.json --output a.json  # ... merged
    python -m evaluation.lm.run_lm_comparison --preset gpu-760m --corpus my_corpus.txt --device cuda

Writes outputs/lm_comparison_<corpus>_<preset>.json and .png (see evaluation.lib.results).
"""

import argparse
from dataclasses import asdict
from pathlib import Path

import torch

from evaluation.lib.corpora import corpus_tag, prepare_corpus
from evaluation.lib.models import ALL_MODELS, MODELS, ModelShape, add_shape_arguments, build_model, matched_models, model_config, shape_from_args
from evaluation.lib.plots import plot_curves
from evaluation.lib.results import ResultsFile, add_output_arguments, command_line, output_path, run_cells
from evaluation.lib.sweep import rate_search, tuned_summary
from evaluation.lib.training import OptimizerSpec, RunSettings, train_lm

# "tiny": ~0.8M non-embedding parameters, 0.6M tokens; "small": width 192, ~1.8M, twice the tokens.
# "gpu-760m" (not run here): the paper's 760M scale (section 9.3: d_model 1024, vocab 32K, 30B
# tokens), 4K context, 128 x 4096 tokens a step.
PRESETS = {
    "tiny": dict(shape=ModelShape(), steps=300, batch_size=8, learning_rates=[1e-3, 3e-3, 1e-2], eval_every=50),
    "small": dict(shape=ModelShape(hidden_size=192, num_heads=6, target_non_embedding=1_800_000), steps=600,
                  batch_size=8, learning_rates=[1e-3, 3e-3, 1e-2], eval_every=50),
    "gpu-760m": dict(shape=ModelShape(hidden_size=1024, num_layers=36, num_heads=16, vocab_size=32000, block_size=4096,
                                      target_non_embedding=690_000_000, titans_chunk_size=64),
                     steps=57_000, batch_size=128, gradient_accumulation=16, learning_rates=[3e-4, 1e-3, 3e-3],
                     eval_every=1000),
}
CHOOSE_ON = "final_validation_loss"
REPORT = ("final_validation_loss", "final_test_loss", "tokens_per_second")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--corpus", default="english", help="english, spanish, code, or a .txt file (one document a line)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=ALL_MODELS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="model initialisation seeds; the first one chooses the learning rate")
    parser.add_argument("--steps", type=int, help="override the preset")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--gradient-accumulation", type=int, help="micro-batches per step (the preset's default)")
    parser.add_argument("--learning-rates", nargs="+", type=float, help="AdamW rates every model tries (the preset's)")
    parser.add_argument("--max-rates", type=int, default=6, help="at most this many rates per model, edges extended")
    parser.add_argument("--eval-every", type=int)
    parser.add_argument("--eval-blocks", type=int, default=32)
    parser.add_argument("--final-eval-blocks", type=int, default=256)
    add_shape_arguments(parser)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--merge-from", type=Path, help="with --resume: add the runs of another job's JSON")
    add_output_arguments(parser, "lm_comparison_<corpus>_<preset>")
    return parser.parse_args(argv)


def settings_from_args(args, lr: float | None = None) -> RunSettings:
    """The run settings; ``lr`` the AdamW rate of one cell (None: a placeholder for the header)."""
    preset = PRESETS[args.preset]
    return RunSettings(steps=args.steps or preset["steps"], batch_size=args.batch_size or preset["batch_size"],
                       gradient_accumulation=args.gradient_accumulation or preset.get("gradient_accumulation", 1),
                       eval_every=args.eval_every or preset["eval_every"], eval_blocks=args.eval_blocks,
                       final_eval_blocks=args.final_eval_blocks, device=args.device,
                       optimizer=OptimizerSpec(name="adamw", lr=lr or float("nan"), adamw_lr=lr or float("nan")))


def cell_of(run: dict) -> tuple:
    return run["model"], run["lr"], run["seed"]


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    shape, settings = shape_from_args(args, PRESETS[args.preset]["shape"]), settings_from_args(args)
    rates = args.learning_rates or PRESETS[args.preset]["learning_rates"]
    sizes = matched_models(args.models, shape, tolerance=0.02)
    tokenizer, blocks = prepare_corpus(args.corpus, shape.vocab_size, shape.block_size)
    path = output_path(args, f"lm_comparison_{corpus_tag(args.corpus)}_{args.preset}")
    if args.merge_from is not None and not (args.resume and path.exists()):
        raise SystemExit("--merge-from needs --resume and an existing --output to merge into")
    results = ResultsFile(path, command_line(__spec__.name, argv), vars(args), args.resume, args.device,
                          varying=("models", "seeds", "learning_rates", "max_rates", "threads", "no_progress",
                                   "commit_results", "merge_from"))
    if args.merge_from is not None:
        other = results.merge(args.merge_from, cell_of)
        for field in ("parameters", "model_configs"):  # the other job's models
            results.fields[field] = {**other.get(field, {}), **results.fields.get(field, {})}
    data = {f"{split}_tokens": b.numel() for split, b in blocks.items()}
    sizes = {**results.fields.get("parameters", {}), **sizes}  # a resumed file keeps its other models
    known = {*results.fields.get("parameters", {}), *args.models}
    models = [name for name in ALL_MODELS if name in known]
    run_settings = {k: v for k, v in asdict(settings).items() if k != "optimizer"}
    results.save(shape=asdict(shape), run_settings={**run_settings, "optimizer": "AdamW, betas (0.9, 0.95), weight "
                 "decay 0.1 except on parameters marked _no_weight_decay; the rate per run"}, parameters=sizes,
                 tokenizer=f"byte-level BPE, vocab {len(tokenizer)}, trained on the training split",
                 data={**data, "tokens_per_run": settings.steps * settings.batch_size * shape.block_size},
                 model_configs={**results.fields.get("model_configs", {}),
                                **{name: model_config(name, shape, sizes[name]["mlp_size"]) for name in args.models}})
    groups = [{"model": name} for name in models]

    def run_cell(cell):
        torch.manual_seed(cell["seed"])
        model = build_model(cell["model"], shape, sizes[cell["model"]]["mlp_size"])
        name = f"{cell['model']} lr {cell['lr']:g} seed {cell['seed']}"
        run = train_lm(model, blocks, settings_from_args(args, cell["lr"]), name, not args.no_progress)
        print(f"{name}: validation {run['final_validation_loss']:.4f}, test {run['final_test_loss']:.4f}, "
              f"{run['tokens_per_second']:.0f} tokens/s", flush=True)
        return run

    def summarize_and_plot(results):
        summary = tuned_summary(results.runs, groups, args.seeds, CHOOSE_ON, REPORT)
        results.save(summary=summary)
        chosen = {(row["model"], row["lr"]) for row in summary["chosen"]}
        plot_curves([r for r in results.runs if (r["model"], r["lr"]) in chosen], "model", "tokens", "validation_loss",
                    path.with_suffix(".png"), x_scale=1e6, xlabel="training tokens (millions)",
                    ylabel="validation loss (nats/token)",
                    title=f"{args.corpus}, {args.preset}: validation loss, each model at its chosen rate")

    mine = [{"model": name} for name in args.models]  # this invocation runs only the models asked for
    while cells := rate_search(results.runs, mine, rates, args.seeds, CHOOSE_ON, max_rates=args.max_rates):
        run_cells(results, cells, run_cell, after=summarize_and_plot)
    summarize_and_plot(results)
    print(f"{'model':16} {'non-emb':>9} {'lr':>7} {'validation':>11} {'test (mean +- std over seeds)':>30} {'tokens/s':>9}")
    for row in results.fields["summary"]["chosen"]:
        test = row["final_test_loss"]
        std = f" +- {test['std']:.4f}" if test["std"] is not None else ""
        print(f"{row['model']:16} {sizes[row['model']]['non_embedding']:>9,} {row['lr']:>7g}{' (edge)' if row['at_edge'] else ''} "
              f"{row['final_validation_loss']['mean']:>11.4f} {test['mean']:>21.4f}{std} {row['tokens_per_second']['mean']:>9.0f}")
    print(f"wrote {path} and {path.with_suffix('.png').name}")
    results.save()  # the duration with the plot
    return results.saved


if __name__ == "__main__":
    main()
