"""Command-line arguments shared by scripts/train.py and scripts/continual_pretrain.py."""

import argparse

from .hub import add_hub_arguments
from .trainer import TrainingConfig, check_resumable


def add_training_arguments(parser: argparse.ArgumentParser, **defaults) -> None:
    """Arguments shared with continual_pretrain.py."""
    parser.add_argument("--output-dir", default=defaults.get("output_dir", "outputs/train"))
    parser.add_argument("--block-size", type=int, default=defaults.get("block_size", 256))
    parser.add_argument("--max-steps", type=int, default=defaults.get("max_steps", 200))
    parser.add_argument("--batch-size", type=int, default=defaults.get("batch_size", 8))
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=defaults.get("learning_rate", 1e-3))
    parser.add_argument("--warmup-steps", type=int, default=defaults.get("warmup_steps", 20))
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "m3"])
    parser.add_argument("--m3-lr", type=float, default=1e-6, help="M3's rate for hidden matrices (--learning-rate: the rest); 1e-6 suits its default eps and variance")
    parser.add_argument("--eval-every", type=int, default=defaults.get("eval_every", 50))
    parser.add_argument("--eval-batches", type=int, default=defaults.get("eval_batches", 8))
    parser.add_argument("--save-every", type=int, default=defaults.get("save_every", 100))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-proc", type=int, default=None, help="processes for tokenisation")
    parser.add_argument("--compile-chunks", action="store_true",
                        help="torch.compile the titans chunk functions; pays off in long runs only (docs/kernels.md)")
    parser.add_argument("--resume-from", default=None,
                        help="a checkpoints/step_N folder of an earlier run, or auto: the latest complete checkpoint "
                             "under --output-dir (none: start at step 0)")
    parser.add_argument("--stop-after-steps", type=int, default=None, help=argparse.SUPPRESS)
    add_hub_arguments(parser)


def training_results(history: list[dict]) -> dict[str, float]:
    """The last training loss and held-out perplexity of a run's history (for the model card)."""
    results = {}
    losses = [r for r in history if "loss" in r]
    if losses:
        results[f"training loss (step {losses[-1]['step']})"] = losses[-1]["loss"]
    evals = [r for r in history if "eval_perplexity" in r]
    if evals:
        results[f"held-out perplexity (step {evals[-1]['step']})"] = evals[-1]["eval_perplexity"]
    return results


def training_config(args) -> TrainingConfig:
    if args.resume_from and args.resume_from != "auto":
        check_resumable(args.resume_from)
    return TrainingConfig(
        output_dir=args.output_dir, max_steps=args.max_steps, batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps, mixed_precision=args.mixed_precision, optimizer=args.optimizer, m3_lr=args.m3_lr, eval_every=args.eval_every,
        eval_batches=args.eval_batches, save_every=args.save_every, seed=args.seed, resume_from=args.resume_from,
        stop_after_steps=args.stop_after_steps, compile_chunks=args.compile_chunks,
    )
