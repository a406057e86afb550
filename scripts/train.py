"""Train a Hope model from scratch with Accelerate.

    python scripts/train.py                                   # preset "tiny" on the embedded English text
    python scripts/train.py --preset small --data my.jsonl --max-steps 2000 --batch-size 16
    accelerate launch --config_file configs/accelerate/ddp.yaml scripts/train.py --preset 760m --data ...
    python scripts/train.py --resume-from outputs/train/checkpoints/step_200   # same arguments otherwise

The model is a preset name or a HopeConfig JSON file (--config). The tokenizer is a local folder
(--tokenizer) or a byte-level BPE trained on the training text.
"""

import argparse
import json
from pathlib import Path

from accelerate.utils import set_seed
from transformers import AutoTokenizer

from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.data import sample_text_path
from hope_hf.training import TrainingConfig, build_datasets, train, train_bpe_tokenizer
from hope_hf.training.trainer import check_resumable

LEVELS = lambda size: [{"intermediate_size": size, "update_period": 1}, {"intermediate_size": size // 2, "update_period": 8}]
PRESETS = {  # the paper's shapes (section 9.3) at the top; small ones for CPU runs and tests
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, cms_levels=LEVELS(256)),
    "small": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, cms_levels=LEVELS(1376)),
    "hybrid-small": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, cms_levels=LEVELS(1376),
                         mixer=["titans", "titans", "titans", "attention"] * 2),
    "760m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, cms_levels=LEVELS(2816)),
    "1.3b": dict(hidden_size=1536, num_hidden_layers=24, num_attention_heads=16, cms_levels=LEVELS(4096)),
}


def model_config(args, tokenizer) -> HopeConfig:
    if args.config:
        fields = json.loads(Path(args.config).read_text())
    elif args.preset in PRESETS:
        fields = dict(PRESETS[args.preset])
    else:
        raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {args.preset!r}")
    fields.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return HopeConfig(**fields)


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
    parser.add_argument("--eval-every", type=int, default=defaults.get("eval_every", 50))
    parser.add_argument("--eval-batches", type=int, default=defaults.get("eval_batches", 8))
    parser.add_argument("--save-every", type=int, default=defaults.get("save_every", 100))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-proc", type=int, default=None, help="processes for tokenisation")
    parser.add_argument("--resume-from", default=None, help="a checkpoints/step_N folder of an earlier run")
    parser.add_argument("--stop-after-steps", type=int, default=None, help=argparse.SUPPRESS)


def training_config(args) -> TrainingConfig:
    if args.resume_from:
        check_resumable(args.resume_from)
    return TrainingConfig(
        output_dir=args.output_dir, max_steps=args.max_steps, batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps, mixed_precision=args.mixed_precision, eval_every=args.eval_every,
        eval_batches=args.eval_batches, save_every=args.save_every, seed=args.seed, resume_from=args.resume_from,
        stop_after_steps=args.stop_after_steps,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help=f"one of {sorted(PRESETS)}")
    parser.add_argument("--config", help="a HopeConfig JSON file instead of a preset")
    parser.add_argument("--data", nargs="+", default=[str(sample_text_path())], help=".txt/.jsonl/.parquet files or a dataset name")
    parser.add_argument("--tokenizer", help="a tokenizer folder; default: a BPE trained on the data")
    parser.add_argument("--vocab-size", type=int, default=4096, help="for the trained BPE")
    add_training_arguments(parser)
    args = parser.parse_args()
    if not args.config and args.preset not in PRESETS:
        parser.error(f"--preset must be one of {sorted(PRESETS)}, got {args.preset!r}")
    config = training_config(args)

    if args.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    elif args.resume_from:
        tokenizer = AutoTokenizer.from_pretrained(Path(args.output_dir) / "tokenizer")
    else:
        texts = [line for path in args.data if Path(path).suffix == ".txt" for line in Path(path).read_text().splitlines()]
        if not texts:
            parser.error("--tokenizer is needed unless --data holds .txt files to train a BPE on")
        tokenizer = train_bpe_tokenizer(texts, args.vocab_size)
        tokenizer.save_pretrained(Path(args.output_dir) / "tokenizer")
    hope_config = model_config(args, tokenizer)
    train_blocks, held_out = build_datasets(args.data, tokenizer, args.block_size, seed=args.seed,
                                            num_proc=args.num_proc, max_model_length=hope_config.max_position_embeddings)
    set_seed(args.seed)  # the same initial weights in every process
    model = HopeForCausalLM(hope_config)
    print(f"HopeForCausalLM ({args.config or args.preset}): {sum(p.numel() for p in model.parameters()):,} parameters; "
          f"{len(train_blocks)} training blocks of {args.block_size} tokens, {len(held_out)} held out")
    train(model, train_blocks, held_out, config, tokenizer)


if __name__ == "__main__":
    main()
