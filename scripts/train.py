"""Train a Hope model from scratch with Accelerate.

    python scripts/train.py                                   # preset "tiny" on the embedded English text
    python scripts/train.py --preset small --data my.jsonl --max-steps 2000 --batch-size 16
    accelerate launch --config_file configs/accelerate/ddp.yaml scripts/train.py --preset 760m --data ...
    python scripts/train.py --resume-from outputs/train/checkpoints/step_200   # same arguments otherwise

The model is a preset name or a HopeConfig JSON file (--config). The tokenizer is a local folder
(--tokenizer) or a byte-level BPE trained on the training text. At the end, the saved model's
test-time learning rule (config.json: test_time_learning) is chosen on the validation documents
of --calibrate-domains (hope_hf.training.calibration).
"""

import argparse
import json
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import set_seed
from transformers import AutoTokenizer

from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.data import sample_text_path
from hope_hf.training import build_datasets, train, train_bpe_tokenizer
from hope_hf.test_time.calibration import SEGMENT_SIZE
from hope_hf.training.calibration import CALIBRATION_TOKENS, calibrate_on_domains
from hope_hf.training.domains import DOMAINS
from hope_hf.training.cli import add_training_arguments, training_config, training_results
from hope_hf.training.hub import finish_model_folder, model_card

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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help=f"one of {sorted(PRESETS)}")
    parser.add_argument("--config", help="a HopeConfig JSON file instead of a preset")
    parser.add_argument("--data", nargs="+", default=[str(sample_text_path())], help=".txt/.jsonl/.parquet files or a dataset name")
    parser.add_argument("--tokenizer", help="a tokenizer folder; default: a BPE trained on the data")
    parser.add_argument("--vocab-size", type=int, default=4096, help="for the trained BPE")
    parser.add_argument("--calibrate-tokens", type=int, default=CALIBRATION_TOKENS,
                        help="validation tokens of each --calibrate-domains on which the saved model's test-time "
                             "learning rule is chosen (0: none, InContextLearner's built-in rule)")
    parser.add_argument("--calibrate-domains", nargs="+", default=list(DOMAINS), help="names or .txt files")
    add_training_arguments(parser)
    args = parser.parse_args()
    if args.calibrate_tokens and args.calibrate_tokens < 2 * SEGMENT_SIZE + 1:
        parser.error(f"--calibrate-tokens must be 0 (no calibration) or >= {2 * SEGMENT_SIZE + 1} (two segments of "
                     f"{SEGMENT_SIZE} and one token), got {args.calibrate_tokens}")
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
    state = train(model, train_blocks, held_out, config, tokenizer)
    final = Path(args.output_dir) / "final"
    if PartialState().is_main_process and final.exists() and state.step == config.max_steps:
        if args.calibrate_tokens:
            calibrate_on_domains(model, tokenizer, args.calibrate_domains, args.calibrate_tokens, folder=final)
        card = model_card(
            model, f"A Hope model ({args.config or 'preset ' + args.preset}) trained from scratch with "
            f"`scripts/train.py` for {state.step} optimizer steps.",
            training_data=f"{', '.join(Path(d).name for d in args.data)}: {len(train_blocks)} blocks of {args.block_size} "
                          f"tokens ({len(held_out)} held out for the perplexity)",
            results=training_results(state.history), license=args.license,
            model_name=args.hub_model_id or Path(args.output_dir).name,
        )
        finish_model_folder(final, card, push=args.push_to_hub, hub_model_id=args.hub_model_id or Path(args.output_dir).name,
                            private=args.hub_private_repo)


if __name__ == "__main__":
    main()
