"""Small-scale language-model comparison: Llama, a Gated DeltaNet stack, Hope (titans), Hope
hybrid (titans + attention) and Hope-Attention at matched non-embedding parameter counts,
trained on the same tokens in the same order; held-out loss / perplexity against tokens.

    python evaluation/lm/run_lm_comparison.py                          # English, tiny, seed 0
    python evaluation/lm/run_lm_comparison.py --corpus python --seeds 0 1
    python evaluation/lm/run_lm_comparison.py --preset gpu-760m --corpus my_corpus.txt --device cuda

Writes evaluation/results/lm_comparison_<corpus>_<preset>_seeds<...>.json and .png (or --output).
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_common import MODELS, ModelShape, OptimizerSpec, RunSettings, build_model, matched_models, prepare_data, train_one  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"

# "tiny" is the pilot (~0.8M non-embedding parameters, 1.2M tokens). "gpu-760m", for GPUs
# and not run here: the paper's 760M scale (section 9.3: d_model 1024, vocab 32K, 30B tokens; the
# layer count is not given, 36 layers reach ~690M non-embedding + 66M embedding parameters), 4K
# context, 128 x 4096 tokens a step, 57,000 steps (30B tokens). Point --corpus at a large .txt file.
PRESETS = {
    "tiny": dict(shape=ModelShape(), steps=600, batch_size=8, lr=3e-3, eval_every=50),
    "gpu-760m": dict(shape=ModelShape(hidden_size=1024, num_layers=36, num_heads=16, vocab_size=32000, block_size=4096,
                                      target_non_embedding=690_000_000, titans_chunk_size=64),
                     steps=57_000, batch_size=128, gradient_accumulation=16, lr=1e-3, eval_every=1000),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--corpus", default="english", help="english, python, or a .txt file (one document a line)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="model initialisation seeds")
    parser.add_argument("--steps", type=int, help="override the preset")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--gradient-accumulation", type=int, help="micro-batches per step (the preset's default)")
    parser.add_argument("--lr", type=float, help="AdamW learning rate (override the preset)")
    parser.add_argument("--eval-every", type=int)
    parser.add_argument("--eval-blocks", type=int, default=32)
    parser.add_argument("--final-eval-blocks", type=int, default=256)
    for name in ("hidden_size", "num_layers", "num_heads", "vocab_size", "block_size", "target_non_embedding",
                 "titans_chunk_size"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, help="override the preset's model shape")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", help="JSON path (the PNG goes next to it)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def shape_from_args(args) -> ModelShape:
    shape = PRESETS[args.preset]["shape"]
    overrides = {k: getattr(args, k) for k in asdict(shape) if getattr(args, k, None) is not None}
    return replace(shape, **overrides)


def settings_from_args(args) -> RunSettings:
    preset = PRESETS[args.preset]
    lr = args.lr or preset["lr"]
    return RunSettings(steps=args.steps or preset["steps"], batch_size=args.batch_size or preset["batch_size"],
                       gradient_accumulation=args.gradient_accumulation or preset.get("gradient_accumulation", 1),
                       eval_every=args.eval_every or preset["eval_every"], eval_blocks=args.eval_blocks,
                       final_eval_blocks=args.final_eval_blocks, device=args.device,
                       optimizer=OptimizerSpec(name="adamw", lr=lr, adamw_lr=lr))


def summarize(runs: list[dict]) -> dict:
    """Per model: mean and spread (min, max, sample std) of the final held-out loss over seeds."""
    summary = {}
    for name in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == name]
        losses = [r["final_held_out_loss"] for r in mine]
        summary[name] = {
            "seeds": [r["seed"] for r in mine],
            "final_held_out_loss_mean": statistics.mean(losses),
            "final_held_out_loss_min": min(losses), "final_held_out_loss_max": max(losses),
            "final_held_out_loss_std": statistics.stdev(losses) if len(losses) > 1 else None,
            "perplexity_of_mean_loss": math.exp(statistics.mean(losses)),
            "tokens_per_second_mean": statistics.mean(r["tokens_per_second"] for r in mine),
        }
    return summary


def print_table(summary: dict, sizes: dict) -> None:
    print(f"{'model':16} {'non-emb':>9} {'emb':>9} {'held-out loss':>14} {'ppl':>8} {'tokens/s':>9}")
    for name, row in summary.items():
        print(f"{name:16} {sizes[name]['non_embedding']:>9,} {sizes[name]['embedding']:>9,} "
              f"{row['final_held_out_loss_mean']:>14.4f} {row['perplexity_of_mean_loss']:>8.2f} {row['tokens_per_second_mean']:>9.0f}")


def plot_curves(runs: list[dict], title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = {name: f"C{i}" for i, name in enumerate(MODELS)}
    labelled = set()
    for run in runs:
        points = [p for p in run["curve"] if p["step"] > 0]
        ax.plot([p["tokens"] / 1e6 for p in points], [p["held_out_loss"] for p in points], color=colors[run["model"]],
                alpha=0.85, label=None if run["model"] in labelled else run["model"])
        labelled.add(run["model"])
    ax.set(xlabel="training tokens (millions)", ylabel="held-out loss (nats/token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    shape, settings = shape_from_args(args), settings_from_args(args)
    sizes = matched_models(args.models, shape)
    tokenizer, train_blocks, held_out = prepare_data(args.corpus, shape.vocab_size, shape.block_size)
    print(f"{args.corpus}: {train_blocks.numel():,} training tokens, {held_out.numel():,} held out; "
          f"{settings.steps * settings.batch_size * shape.block_size:,} tokens per run")
    corpus_tag = Path(args.corpus).stem if args.corpus.endswith(".txt") else args.corpus
    output = Path(args.output) if args.output else RESULTS / f"lm_comparison_{corpus_tag}_{args.preset}_seeds{'-'.join(map(str, args.seeds))}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    context = dict(args=args, argv=argv, started=started, shape=shape, settings=settings, sizes=sizes,
                   tokenizer=tokenizer, train_blocks=train_blocks, held_out=held_out)
    runs = []
    for seed in args.seeds:
        for name in args.models:  # models interleaved within a seed
            torch.manual_seed(seed)
            model = build_model(name, shape, sizes[name]["mlp_size"])
            result = train_one(model, train_blocks, held_out, settings, description=f"{name} seed {seed}",
                               progress=not args.no_progress)
            runs.append({"model": name, "seed": seed, **result})
            print(f"{name} seed {seed}: held-out loss {result['final_held_out_loss']:.4f}, "
                  f"{result['tokens_per_second']:.0f} tokens/s", flush=True)
            del model
            complete = len(runs) == len(args.seeds) * len(args.models)
            payload = results_payload(runs, complete=complete, **context)
            output.write_text(json.dumps(payload, indent=1))  # after every run: a stopped job keeps what finished
    print_table(payload["summary"], sizes)
    plot_curves(runs, f"{args.corpus}, {args.preset}: held-out loss (seeds {args.seeds})", output.with_suffix(".png"))
    print(f"wrote {output} and {output.with_suffix('.png').name}")
    return payload


def results_payload(runs, complete, args, argv, started, shape, settings, sizes, tokenizer, train_blocks, held_out) -> dict:
    return {
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "complete": complete,
        "duration_s": time.time() - started,
        "load_average_1_5_15min_at_end": os.getloadavg(),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cpu_count": os.cpu_count(), "device": settings.device},
        "corpus": args.corpus, "preset": args.preset, "seeds": args.seeds,
        "data": {"training_tokens": train_blocks.numel(), "held_out_tokens": held_out.numel(),
                 "tokens_per_run": settings.steps * settings.batch_size * shape.block_size,
                 "eval_tokens_per_point": min(settings.eval_blocks, len(held_out)) * shape.block_size,
                 "final_eval_tokens": min(settings.final_eval_blocks, len(held_out)) * shape.block_size,
                 "tokenizer": f"byte-level BPE, vocab {len(tokenizer)}, trained on the training split"},
        "shape": asdict(shape), "settings": asdict(settings), "parameters": sizes,
        "model_configs": {name: build_model_config(name, shape, sizes[name]["mlp_size"]) for name in args.models},
        "summary": summarize(runs), "runs": runs,
    }


def build_model_config(name: str, shape: ModelShape, mlp_size: int) -> dict:
    with torch.device("meta"):
        config = build_model(name, shape, mlp_size).config.to_dict()
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in ("transformers_version",)}


if __name__ == "__main__":
    main()
