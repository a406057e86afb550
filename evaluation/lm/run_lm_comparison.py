"""Small-scale language-model comparison: Llama, a Gated DeltaNet stack, Hope (titans), Hope
hybrid (titans + attention) and Hope-Attention at matched non-embedding parameter counts,
trained on the same tokens in the same order. Validation loss along training; the final
validation and test losses at the end (choices on validation, reports on test).

    python -m evaluation.lm.run_lm_comparison                              # English, tiny, seed 0
    python -m evaluation.lm.run_lm_comparison --corpus code --seeds 0 1 --resume
    python -m evaluation.lm.run_lm_comparison --preset gpu-760m --corpus my_corpus.txt --device cuda

Writes outputs/lm_comparison_<corpus>_<preset>.json and .png (see evaluation.lib.results).
"""

import argparse
from dataclasses import asdict

import torch

from evaluation.lib.corpora import corpus_tag, prepare_corpus
from evaluation.lib.models import MODELS, ModelShape, add_shape_arguments, build_model, matched_models, model_config, shape_from_args
from evaluation.lib.plots import plot_curves
from evaluation.lib.results import ResultsFile, add_output_arguments, command_line, output_path, run_cells
from evaluation.lib.sweep import grid, summarize
from evaluation.lib.training import OptimizerSpec, RunSettings, train_lm

# "tiny": ~0.8M non-embedding parameters, 1.2M tokens. "gpu-760m" (not run here): the paper's 760M
# scale (section 9.3: d_model 1024, vocab 32K, 30B tokens), 4K context, 128 x 4096 tokens a step.
PRESETS = {
    "tiny": dict(shape=ModelShape(), steps=600, batch_size=8, lr=3e-3, eval_every=50),
    "gpu-760m": dict(shape=ModelShape(hidden_size=1024, num_layers=36, num_heads=16, vocab_size=32000, block_size=4096,
                                      target_non_embedding=690_000_000, titans_chunk_size=64),
                     steps=57_000, batch_size=128, gradient_accumulation=16, lr=1e-3, eval_every=1000),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--corpus", default="english", help="english, spanish, code, or a .txt file (one document a line)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="model initialisation seeds")
    parser.add_argument("--steps", type=int, help="override the preset")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--gradient-accumulation", type=int, help="micro-batches per step (the preset's default)")
    parser.add_argument("--lr", type=float, help="AdamW learning rate (override the preset)")
    parser.add_argument("--eval-every", type=int)
    parser.add_argument("--eval-blocks", type=int, default=32)
    parser.add_argument("--final-eval-blocks", type=int, default=256)
    add_shape_arguments(parser)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-progress", action="store_true")
    add_output_arguments(parser, "lm_comparison_<corpus>_<preset>")
    return parser.parse_args(argv)


def settings_from_args(args) -> RunSettings:
    preset = PRESETS[args.preset]
    lr = args.lr or preset["lr"]
    return RunSettings(steps=args.steps or preset["steps"], batch_size=args.batch_size or preset["batch_size"],
                       gradient_accumulation=args.gradient_accumulation or preset.get("gradient_accumulation", 1),
                       eval_every=args.eval_every or preset["eval_every"], eval_blocks=args.eval_blocks,
                       final_eval_blocks=args.final_eval_blocks, device=args.device,
                       optimizer=OptimizerSpec(name="adamw", lr=lr, adamw_lr=lr))


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    shape, settings = shape_from_args(args, PRESETS[args.preset]["shape"]), settings_from_args(args)
    sizes = matched_models(args.models, shape)
    tokenizer, blocks = prepare_corpus(args.corpus, shape.vocab_size, shape.block_size)
    path = output_path(args, f"lm_comparison_{corpus_tag(args.corpus)}_{args.preset}")
    results = ResultsFile(path, command_line(__spec__.name, argv), vars(args), args.resume, args.device,
                          varying=("models", "seeds", "threads", "no_progress", "commit_results"))
    data = {f"{split}_tokens": b.numel() for split, b in blocks.items()}
    sizes = {**results.fields.get("parameters", {}), **sizes}  # a resumed file keeps its other models
    results.save(shape=asdict(shape), run_settings=asdict(settings), parameters=sizes, tokenizer=f"byte-level BPE, vocab {len(tokenizer)}, "
                 "trained on the training split", data={**data, "tokens_per_run": settings.steps * settings.batch_size
                                                        * shape.block_size},
                 model_configs={**results.fields.get("model_configs", {}),
                                    **{name: model_config(name, shape, sizes[name]["mlp_size"]) for name in args.models}})

    def run_cell(cell):
        torch.manual_seed(cell["seed"])
        model = build_model(cell["model"], shape, sizes[cell["model"]]["mlp_size"])
        run = train_lm(model, blocks, settings, f"{cell['model']} seed {cell['seed']}", not args.no_progress)
        print(f"{cell['model']} seed {cell['seed']}: validation {run['final_validation_loss']:.4f}, "
              f"test {run['final_test_loss']:.4f}, {run['tokens_per_second']:.0f} tokens/s", flush=True)
        return run

    def summarize_and_plot(results):
        metrics = ("final_validation_loss", "final_test_loss", "tokens_per_second")
        results.save(summary=summarize(results.runs, by=("model",), metrics=metrics))
        plot_curves(results.runs, "model", "tokens", "validation_loss", path.with_suffix(".png"), x_scale=1e6,
                    xlabel="training tokens (millions)", ylabel="validation loss (nats/token)",
                    title=f"{args.corpus}, {args.preset}: validation loss")

    run_cells(results, grid(seed=args.seeds, model=args.models), run_cell, after=summarize_and_plot)  # models interleaved
    summarize_and_plot(results)
    print(f"{'model':16} {'non-emb':>9} {'validation':>11} {'test':>8} {'tokens/s':>9}")
    for row in results.fields["summary"]:
        print(f"{row['model']:16} {sizes[row['model']]['non_embedding']:>9,} {row['final_validation_loss']['mean']:>11.4f} "
              f"{row['final_test_loss']['mean']:>8.4f} {row['tokens_per_second']['mean']:>9.0f}")
    print(f"wrote {path} and {path.with_suffix('.png').name}")
    results.save()  # the duration with the plot
    return results.saved


if __name__ == "__main__":
    main()
